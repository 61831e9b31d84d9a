"""Forward a call unchanged when the client speaks its route's own wire format.

litellm's /v1/messages and /v1/chat/completions handlers rebuild the request body for the
provider: on a model its cost map does not know to think, the messages handler drops
`thinking` and `output_config` (AnthropicMessagesConfig._translate_adaptive_effort_for_non_adaptive_model
in llms/anthropic/pass_through/messages/transformation.py), and the chat handler drops
`content: null` from assistant messages. The dataset would then claim a request the model
never got. So when an Anthropic client reaches an `anthropic/` route, or an OpenAI chat
client an `openai/` route, these routes send the client's body as it came, with only
`model` renamed to the route's, to the route's own api_base with the route's own key
(litellm's pass_through_request does the HTTP, streaming or not). Every other call goes to
litellm's own handler, which translates, and the recorder keeps what it sent upstream.

litellm's router pass-through (Router.allm_passthrough_route) would pick the deployment
too, but has no pass-through config for the anthropic and openai providers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request, Response
from litellm.proxy._types import UserAPIKeyAuth
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth
from litellm.types.passthrough_endpoints.pass_through_endpoints import LITELLM_PASS_THROUGH_RAW_BODY_STATE_KEY

router = APIRouter()

ANTHROPIC_VERSION = "2023-06-01"  # litellm's default when the client names none


def recorder():
    """The trajhub recorder litellm loaded from the config (its own copy of
    trajectory_logger.py, so it is found among litellm's callbacks, not imported), or None."""
    import litellm

    return next((c for c in litellm.callbacks if getattr(c, "trajhub_recorder", False)), None)


async def _route(body: dict, provider: str) -> dict | None:
    """The route (deployment) for the body's model if it is a `provider` route, else None."""
    import litellm
    from litellm.proxy.proxy_server import llm_router

    if llm_router is None or not isinstance(body.get("model"), str):
        return None
    try:
        deployment = await llm_router.async_get_available_deployment(model=body["model"], request_kwargs={})
        params = deployment["litellm_params"]
        model, found, _, _ = litellm.get_llm_provider(
            model=params["model"], custom_llm_provider=params.get("custom_llm_provider")
        )
    except Exception:  # noqa: BLE001 - an unknown model: litellm's handler gives the client its error
        return None
    if found != provider:
        return None
    return {"model": model, "api_base": params.get("api_base"), "api_key": params.get("api_key")}


def _anthropic_upstream(route: dict, request: Request) -> tuple[str, dict]:
    from litellm.llms.anthropic.pass_through.messages.transformation import AnthropicMessagesConfig

    target = AnthropicMessagesConfig().get_complete_url(route["api_base"], None, route["model"], {}, {})
    headers = {
        "x-api-key": route["api_key"] or "",
        "anthropic-version": request.headers.get("anthropic-version", ANTHROPIC_VERSION),
    }
    if "anthropic-beta" in request.headers:  # the features the client asked for
        headers["anthropic-beta"] = request.headers["anthropic-beta"]
    return target, headers


def _openai_upstream(route: dict, request: Request) -> tuple[str, dict]:
    from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig

    api_base = (
        route["api_base"]
        or os.environ.get("OPENAI_BASE_URL")
        or os.environ.get("OPENAI_API_BASE")
        or "https://api.openai.com/v1"
    )
    target = OpenAIGPTConfig().get_complete_url(api_base, None, route["model"], {}, {})
    return target, {"authorization": f"Bearer {route['api_key'] or ''}"}


async def _serve(
    request: Request,
    user: UserAPIKeyAuth,
    provider: str,
    upstream: Callable[[dict, Request], tuple[str, dict]],
    litellm_handler: Callable[[], Awaitable[Response]],
) -> Response:
    from litellm.proxy.common_utils.http_parsing_utils import read_request_body
    from litellm.proxy.pass_through_endpoints.pass_through_endpoints import pass_through_request

    body = await read_request_body(request)
    route = await _route(body, provider)
    if route is None:
        return await litellm_handler()
    target, headers = upstream(route, request)
    if (found := recorder()) is not None:
        found.forwarded(f"{provider}/{route['model']}")
    # The client's body, key order kept; only the model is the route's. Sent as these bytes:
    # pass_through_request would otherwise send its parsed copy, from which it takes out
    # the keys litellm reads itself (`metadata`, `user`, ...).
    sent = {k: (route["model"] if k == "model" else v) for k, v in body.items()}
    setattr(request.state, LITELLM_PASS_THROUGH_RAW_BODY_STATE_KEY, json.dumps(sent).encode())
    # forward_headers=False: the client's own headers (its proxy key among them) stay here.
    return await pass_through_request(
        request,
        target=target,
        user_api_key_dict=user,
        custom_body=sent,
        custom_headers=dict(headers, **{"content-type": "application/json"}),
        forward_headers=False,
        stream=bool(body.get("stream")),
    )


@router.post("/v1/messages")
async def messages(
    request: Request, fastapi_response: Response, user_api_key_dict: UserAPIKeyAuth = Depends(user_api_key_auth)
):
    from litellm.proxy.anthropic_endpoints.endpoints import anthropic_response

    return await _serve(
        request,
        user_api_key_dict,
        "anthropic",
        _anthropic_upstream,
        lambda: anthropic_response(fastapi_response, request, user_api_key_dict),
    )


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(
    request: Request, fastapi_response: Response, user_api_key_dict: UserAPIKeyAuth = Depends(user_api_key_auth)
):
    from litellm.proxy.proxy_server import chat_completion

    return await _serve(
        request,
        user_api_key_dict,
        "openai",
        _openai_upstream,
        lambda: chat_completion(request, fastapi_response, user_api_key_dict=user_api_key_dict),
    )


def install(app) -> None:
    """Put these routes ahead of litellm's for the same paths: the first match serves."""
    app.router.routes[:0] = router.routes
