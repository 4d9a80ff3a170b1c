"""Topics and models, and the "gathering parameters" endpoints."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .responses import api_error

INPUT_FORMAT = ["occp_text", "tasks_text"]


@dataclass(frozen=True)
class Model:
    model_id: str
    version: int
    release_date: str
    topic_standard: str
    topic_version: str

    def as_api(self) -> dict:
        return {
            "modelId": self.model_id,
            "modelVersion": self.version,
            "modelReleaseDate": self.release_date,
            "modelType": "hsvm2",
            "inputFormat": list(INPUT_FORMAT),
            "topicStandard": self.topic_standard,
            "topicVersion": self.topic_version,
        }


ANZSCO = "ANZSCO - Australian and New Zealand Standard Classification of Occupations"
OSCA = "OSCA - Occupation Standard Classification for Australia"
ANZSIC = "ANZSIC - Australian and New Zealand Standard Industrial Classification"

TOPICS: dict[str, str] = {"anzsco": ANZSCO, "osca": OSCA, "anzsic": ANZSIC}

# Latest first. `anzsic` is listed but has no model yet, as the guide's 500 error describes.
MODELS: dict[str, list[Model]] = {
    "anzsco": [
        Model("00000000-0000-0000-0000-000000000002", 2, "2023-12-20T06:06:44.514Z", ANZSCO, "2022"),
        Model("00000000-0000-0000-0000-000000000003", 1, "2022-11-01T03:12:09.101Z", ANZSCO, "2022"),
    ],
    "osca": [
        Model("00000000-0000-0000-0000-000000000001", 2, "2025-05-20T06:06:44.514Z", OSCA, "2024"),
        Model("00000000-0000-0000-0000-000000000000", 1, "2024-12-06T01:00:00.000Z", OSCA, "2024"),
    ],
    "anzsic": [],
}


def resolve(topic: str, model_id: str | None) -> Model:
    """The model to use, or the API's error for an unknown topic or model."""
    if topic not in TOPICS:
        raise api_error(404, "The specified topic does not exist")
    models = MODELS[topic]
    if model_id is None or model_id == "latest":
        if not models:
            raise api_error(500, f"No models found for topic {topic}")
        return models[0]
    for model in models:
        if model.model_id == model_id:
            return model
    if any(m.model_id == model_id for ms in MODELS.values() for m in ms):
        raise api_error(409, "Selected model does not match the input topic.")
    raise api_error(404, "The specified model does not exist")


async def list_topics(request: web.Request) -> web.Response:
    return web.json_response([{"uriName": k, "fullName": v} for k, v in TOPICS.items()])


async def describe_topic(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    if topic not in TOPICS:
        raise api_error(404, "The specified topic does not exist")
    return web.json_response(
        {"uriName": topic, "fullName": TOPICS[topic], "inputFormat": list(INPUT_FORMAT)}
    )


async def list_models(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    resolve(topic, None)  # 404 unknown topic, 500 no models
    return web.json_response([m.as_api() for m in MODELS[topic]])


async def latest_model(request: web.Request) -> web.Response:
    return web.json_response(resolve(request.match_info["topic"], None).as_api())


async def security_txt(request: web.Request) -> web.Response:
    return web.Response(
        text="<p>contact: <mailto:security@abs.gov.au>\nexpires: 2026-08-27T05:45:00.000Z</p>",
        content_type="text/html",
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/topics", list_topics)
    app.router.add_get("/v1/topics/{topic}", describe_topic)
    app.router.add_get("/v1/topics/{topic}/models", list_models)
    app.router.add_get("/v1/topics/{topic}/models/latest", latest_model)
    app.router.add_get("/v1/security.txt", security_txt)
