"""Gathering parameters: topics, models, and their errors."""

MODEL_FIELDS = {"modelId", "modelVersion", "modelReleaseDate", "modelType", "inputFormat",
                "topicStandard", "topicVersion"}
OSCA_LATEST = "00000000-0000-0000-0000-000000000001"
ANZSCO_LATEST = "00000000-0000-0000-0000-000000000002"


async def test_topics_list_both_classifications(api):
    status, topics = await api.call("GET", "/v1/topics")
    assert status == 200
    names = {t["uriName"]: t["fullName"] for t in topics}
    assert names["anzsco"].startswith("ANZSCO")
    assert names["osca"].startswith("OSCA")


async def test_describe_topic(api):
    status, body = await api.call("GET", "/v1/topics/osca")
    assert status == 200 and body["uriName"] == "osca"
    assert body["inputFormat"] == ["occp_text", "tasks_text"]


async def test_models_and_latest_have_the_guide_fields(api):
    for topic, latest in (("osca", OSCA_LATEST), ("anzsco", ANZSCO_LATEST)):
        status, models = await api.call("GET", f"/v1/topics/{topic}/models")
        assert status == 200 and len(models) >= 1
        assert all(set(m) == MODEL_FIELDS for m in models)
        status, model = await api.call("GET", f"/v1/topics/{topic}/models/latest")
        assert status == 200 and model["modelId"] == latest
        assert model["inputFormat"] == ["occp_text", "tasks_text"]


async def test_unknown_topic_is_404(api):
    for path in ("/v1/topics/nope", "/v1/topics/nope/models", "/v1/topics/nope/models/latest"):
        assert await api.call("GET", path) == (404, {"message": "The specified topic does not exist"})


async def test_topic_without_models_is_500(api):
    assert await api.call("GET", "/v1/topics/anzsic/models") == (500, {"message": "No models found for topic anzsic"})


async def test_unknown_model_is_404_and_foreign_model_is_409(api):
    record = {"record": {"occp_text": "chef", "tasks_text": "cooking"}}
    status, body = await api.call("POST", "/v1/topics/osca/models/11111111-0000-0000-0000-000000000000/code", json=record)
    assert (status, body) == (404, {"message": "The specified model does not exist"})
    status, body = await api.call("POST", f"/v1/topics/osca/models/{ANZSCO_LATEST}/code", json=record)
    assert (status, body) == (409, {"message": "Selected model does not match the input topic."})


async def test_security_txt(api):
    status, text = await api.call("GET", "/v1/security.txt")
    assert status == 200 and "security@abs.gov.au" in text
