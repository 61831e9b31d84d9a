"""The proxy's routes for a project: one per configured model, ahead of the bundled ones.

A model's `route` is the name its agent asks the proxy for, and the LiteLLM model string
the proxy calls; its `api_base` and `api_key_env` say where and with which key. Without
an entry of its own a model would fall through to the bundled wildcard routes, which know
neither (a configured endpoint received nothing, and the call failed for want of a key).
The key is referenced as `os.environ/<VAR>`, so it never lands in a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from trajhub_assets.config import ModelConfig
from trajhub_assets.errors import ConfigError
from trajhub_assets.recording.proxy_process import DEFAULT_CONFIG


def model_route(model: ModelConfig) -> dict:
    """The LiteLLM model_list entry that serves `model` as configured."""
    params = {"model": model.route}
    if model.api_base:
        params["api_base"] = model.api_base
    if model.api_key_env:
        params["api_key"] = f"os.environ/{model.api_key_env}"
    return {"model_name": model.route, "litellm_params": params}


def project_proxy_config(models: list[ModelConfig], base: str | os.PathLike = DEFAULT_CONFIG) -> dict:
    """The bundled proxy config with a route per model that names its endpoint or key.

    LiteLLM matches a model name exactly before it tries wildcard routes, so these
    entries win over e.g. `anthropic/*` without removing it. Models sharing a route must
    agree on where it goes: one name can have only one meaning to the proxy.
    """
    config = yaml.safe_load(Path(base).read_text())
    routes: dict[str, tuple[ModelConfig, dict]] = {}
    for model in models:
        if not (model.api_base or model.api_key_env):
            continue  # served by a bundled route
        entry = model_route(model)
        if model.route in routes and routes[model.route][1] != entry:
            other = routes[model.route][0]
            raise ConfigError(
                f"models {other.name!r} and {model.name!r} both use route {model.route!r} "
                "with different api_base/api_key_env; give one of them another route name"
            )
        routes[model.route] = (model, entry)
    config["model_list"] = [entry for _, entry in routes.values()] + list(config.get("model_list") or [])
    return config


def missing_keys(models) -> list[str]:
    """`model: VAR` for each model whose key variable is not set (checked before any run)."""
    return [f"{m.name}: {m.api_key_env}" for m in models if m.api_key_env and not m.api_key()]


def write_proxy_config(
    models: list[ModelConfig], path: str | os.PathLike, base: str | os.PathLike = DEFAULT_CONFIG
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(yaml.safe_dump(project_proxy_config(models, base), sort_keys=False))
    partial.replace(path)  # another run starting its proxy never reads half a file
    return path
