"""ATIF (Agent Trajectory Interchange Format) as a JSON Schema (draft 2020-12).

Written field for field from Harbor's reference models, `src/harbor/models/trajectories/*.py`
of the `harbor` package 0.25.0 (harbor-framework/harbor, Apache-2.0), which accept
schema versions ATIF-v1.0 to ATIF-v1.8; the prose spec is the RFC
`rfcs/0001-trajectory-format.md` of the same repository (formerly laude-institute/harbor,
`docs/rfcs/0001-trajectory-format.md`). Like those models, every object refuses fields it
does not declare (custom data goes into the `extra` objects).

The rules that relate fields to each other (step ids 1..n, agent-only step fields,
observation results pointing at the step's own tool calls, ISO 8601 timestamps) are
checked in `atif.py`, where the error can name the step.

One deliberate leniency: Harbor 0.25 requires a subagent reference to carry
`trajectory_id` or `trajectory_path`; ATIF before v1.7 keyed references by `session_id`,
so a reference with any of the three is accepted here.
"""

from __future__ import annotations

SCHEMA_VERSIONS = tuple(f"ATIF-v1.{minor}" for minor in range(9))


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_EXTRA = {"type": ["object", "null"]}
_STRING = {"type": ["string", "null"]}
_INTEGER = {"type": ["integer", "null"]}
_NUMBER = {"type": ["number", "null"]}

_MEDIA_SOURCE = _object(
    {
        "media_type": {"type": "string", "pattern": "^(image|audio)/"},
        "path": {"type": "string"},
        "duration_sec": {"type": ["number", "null"], "minimum": 0},  # audio only (v1.8)
    },
    required=("media_type", "path"),
)

# A text part carries `text`, an image or audio part a `source` (v1.6, audio v1.8).
_CONTENT_PART = {
    **_object(
        {
            "type": {"enum": ["text", "image", "audio"]},
            "text": _STRING,
            "source": {"anyOf": [_MEDIA_SOURCE, {"type": "null"}]},
        },
        required=("type",),
    ),
    "if": {"properties": {"type": {"const": "text"}}},
    "then": {"required": ["text"], "properties": {"source": {"type": "null"}}},
    "else": {"required": ["source"], "properties": {"text": {"type": "null"}}},
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}]}

_SUBAGENT_REF = {
    **_object({"trajectory_id": _STRING, "session_id": _STRING, "trajectory_path": _STRING, "extra": _EXTRA}),
    "anyOf": [{"required": [key]} for key in ("trajectory_id", "trajectory_path", "session_id")],
}

_TOOL_CALL = _object(
    {
        "tool_call_id": {"type": "string"},
        "function_name": {"type": "string"},
        "arguments": {"type": "object"},
        "extra": _EXTRA,  # v1.7
    },
    required=("tool_call_id", "function_name", "arguments"),
)

_OBSERVATION = _object(
    {
        "results": {
            "type": "array",
            "items": _object(
                {
                    "source_call_id": _STRING,
                    "content": {"anyOf": [_CONTENT, {"type": "null"}]},
                    "subagent_trajectory_ref": {"type": ["array", "null"], "items": _SUBAGENT_REF},
                    "extra": _EXTRA,  # v1.7
                }
            ),
        }
    },
    required=("results",),
)

_METRICS = _object(
    {
        "prompt_tokens": _INTEGER,
        "completion_tokens": _INTEGER,
        "cached_tokens": _INTEGER,
        "cost_usd": _NUMBER,
        "prompt_token_ids": {"type": ["array", "null"], "items": {"type": "integer"}},
        "completion_token_ids": {"type": ["array", "null"], "items": {"type": "integer"}},
        "logprobs": {"type": ["array", "null"], "items": {"type": "number"}},
        "extra": _EXTRA,
    }
)

_STEP = _object(
    {
        "step_id": {"type": "integer", "minimum": 1},
        "timestamp": _STRING,
        "source": {"enum": ["system", "user", "agent"]},
        "model_name": _STRING,
        "reasoning_effort": {"type": ["string", "number", "null"]},
        "message": _CONTENT,
        "reasoning_content": _STRING,
        "tool_calls": {"type": ["array", "null"], "items": _TOOL_CALL},
        "observation": {"anyOf": [_OBSERVATION, {"type": "null"}]},
        "metrics": {"anyOf": [_METRICS, {"type": "null"}]},
        "is_copied_context": {"type": ["boolean", "null"]},  # v1.5
        "llm_call_count": {"type": ["integer", "null"], "minimum": 0},  # v1.7
        "extra": _EXTRA,
    },
    required=("step_id", "source", "message"),
)

_AGENT = _object(
    {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "model_name": _STRING,
        "tool_definitions": {"type": ["array", "null"], "items": {"type": "object"}},  # v1.5
        "extra": _EXTRA,
    },
    required=("name", "version"),
)

_FINAL_METRICS = _object(
    {
        "total_prompt_tokens": _INTEGER,
        "total_completion_tokens": _INTEGER,
        "total_cached_tokens": _INTEGER,
        "total_cost_usd": _NUMBER,
        "total_steps": {"type": ["integer", "null"], "minimum": 0},
        "extra": _EXTRA,
    }
)

ATIF_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ATIF trajectory",
    **_object(
        {
            "schema_version": {"enum": list(SCHEMA_VERSIONS)},
            "session_id": _STRING,  # required before v1.7, optional since
            "trajectory_id": _STRING,  # v1.7
            "agent": _AGENT,
            "steps": {"type": "array", "minItems": 1, "items": _STEP},
            "notes": _STRING,
            "final_metrics": {"anyOf": [_FINAL_METRICS, {"type": "null"}]},
            "continued_trajectory_ref": _STRING,
            "extra": _EXTRA,
            # v1.7: whole subagent trajectories in one file; each needs its own trajectory_id.
            "subagent_trajectories": {
                "type": ["array", "null"],
                "items": {
                    "allOf": [
                        {"$ref": "#"},
                        {"required": ["trajectory_id"], "properties": {"trajectory_id": {"type": "string"}}},
                    ]
                },
            },
        },
        required=("schema_version", "agent", "steps"),
    ),
}
