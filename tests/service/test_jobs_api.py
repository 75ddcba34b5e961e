"""Job submission: strict validation at submit, idempotency, reads, lists, events, cancel."""

from __future__ import annotations

from jobs import store
from jobs.states import JobStatus

from .conftest import remove_body


def _codes(response) -> list[tuple]:
    return [(tuple(e["loc"]), e["type"]) for e in response.json().get("errors", [])]


def test_submit_returns_202_location_and_queued_job(client_a, uploaded):
    response = client_a.post("/v1/jobs", json=remove_body(uploaded))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert int(response.headers["retry-after"]) > 0
    assert job["object"] == "job" and job["type"] == "remove" and job["status"] == "queued"
    assert job["inputs"]["checkpoint"] == {
        "artifact_id": uploaded["checkpoint"]["id"],
        "sha256": uploaded["checkpoint"]["sha256"],
    }
    assert job["validated_at"] and job["result"] is None and job["error"] is None
    read = client_a.get(f"/v1/jobs/{job['id']}")
    assert read.status_code == 200 and read.json()["id"] == job["id"] and "retry-after" in read.headers


def test_unknown_field_is_422(client_a, uploaded):
    response = client_a.post("/v1/jobs", json=remove_body(uploaded, surprise=1))
    assert response.status_code == 422
    body = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert body["code"] == "validation-error" and body["request_id"]
    assert (("body", "surprise"), "extra_forbidden") in _codes(response)
    nested = client_a.post("/v1/jobs", json=remove_body(uploaded, options={"tol": 1e-3, "bogus": True}))
    assert (("body", "options", "bogus"), "extra_forbidden") in _codes(nested)


def test_unknown_arch_and_arch_arguments_are_422(client_a, uploaded):
    body = remove_body(uploaded)
    body["model"]["arch"] = "transformer"
    assert client_a.post("/v1/jobs", json=body).status_code == 422
    body = remove_body(uploaded)
    body["model"]["config"]["depth"] = 3
    response = client_a.post("/v1/jobs", json=body)
    assert response.status_code == 422 and "depth" in response.json()["errors"][0]["msg"]


def test_bad_option_values_are_422(client_a, uploaded):
    for options in ({"damping": -1}, {"max_iter": 10**9}, {"tol": 0}, {"solver": "magic"}, {"ratio": "0.5"}):
        response = client_a.post("/v1/jobs", json=remove_body(uploaded, options=options))
        assert response.status_code == 422, options
    nan = client_a.post(
        "/v1/jobs",
        content=b'{"type": "remove", "options": {"damping": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422


def test_artifact_of_wrong_kind_is_422(client_a, uploaded):
    response = client_a.post("/v1/jobs", json=remove_body(uploaded, train=uploaded["checkpoint"]["id"]))
    assert response.status_code == 422
    assert (("body", "train"), "artifact_wrong_kind") in _codes(response)


def test_other_tenants_artifact_is_422_not_found(client_b, uploaded):
    response = client_b.post("/v1/jobs", json=remove_body(uploaded))
    assert response.status_code == 422
    assert {
        (("body", "model", "checkpoint"), "artifact_not_found"),
        (("body", "train"), "artifact_not_found"),
    } <= set(_codes(response))


def test_indices_out_of_range_or_duplicated_are_422(client_a, uploaded):
    out = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"indices": [0, 5, 1200, 99999]}))
    assert out.status_code == 422
    assert _codes(out) == [(("body", "forget", "indices", 2), "index_out_of_range"),
                           (("body", "forget", "indices", 3), "index_out_of_range")]  # fmt: skip
    dup = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"indices": [4, 7, 4]}))
    assert dup.status_code == 422 and "duplicated index 4" in dup.json()["errors"][0]["msg"]
    both = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"class": 1, "indices": [1]}))
    assert both.status_code == 422


def test_ids_need_a_training_set_that_names_its_samples(client_a, uploaded):
    """``forget.ids`` against a training set uploaded without ``sample_ids`` is refused at submit;
    ids are int64, distinct, and exclusive with ``class`` / ``indices``."""
    refused = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"ids": [12, 2**40]}))
    assert refused.status_code == 422
    assert _codes(refused) == [(("body", "forget", "ids"), "sample_ids_missing")]
    dup = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"ids": [-4, 9, -4]}))
    assert dup.status_code == 422 and "duplicated id -4" in dup.json()["errors"][0]["msg"]
    too_big = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"ids": [2**63]}))
    assert too_big.status_code == 422
    relabel = remove_body(uploaded, type="relabel", relabel={"ids": [3, 4], "labels": [1, 2]})
    del relabel["forget"]
    assert _codes(client_a.post("/v1/jobs", json=relabel)) == [
        (("body", "relabel", "ids"), "sample_ids_missing")
    ]
    uneven = client_a.post("/v1/jobs", json={**relabel, "relabel": {"ids": [3, 4], "labels": [1]}})
    assert uneven.status_code == 422 and "2 ids but 1 labels" in uneven.text
    both = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"indices": [1], "ids": [1]}))
    assert both.status_code == 422
    assert both.json()["errors"][0]["msg"].endswith('give exactly one of "class", "indices" or "ids"')


def test_labels_and_classes_out_of_range_are_422(client_a, uploaded):
    body = remove_body(uploaded, type="relabel", relabel={"indices": [1, 2, 3], "labels": [0, 10, 4]})
    del body["forget"]
    response = client_a.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert _codes(response) == [(("body", "relabel", "labels", 1), "label_out_of_range")]
    mismatched = dict(body, relabel={"indices": [1, 2], "labels": [0]})
    assert client_a.post("/v1/jobs", json=mismatched).status_code == 422
    no_class = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"class": 12}))
    assert _codes(no_class) == [(("body", "forget", "class"), "label_out_of_range")]


def test_scores_job_needs_a_dataset_of_queries(client_a, uploaded):
    body = {
        "type": "scores",
        "model": remove_body(uploaded)["model"],
        "train": uploaded["train"]["id"],
        "queries": uploaded["queries"]["id"],
        "top_k": 3,
    }
    assert client_a.post("/v1/jobs", json=body).status_code == 202
    wrong = dict(body, queries=uploaded["checkpoint"]["id"])
    assert (("body", "queries"), "artifact_wrong_kind") in _codes(client_a.post("/v1/jobs", json=wrong))


def test_idempotent_replay_and_mismatch(client_a, client_b, uploaded):
    body = remove_body(uploaded)
    first = client_a.post("/v1/jobs", json=body, headers={"Idempotency-Key": "run-42"})
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    replay = client_a.post(
        "/v1/jobs", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": '"run-42"'}
    )
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    other = client_a.post(
        "/v1/jobs", json=remove_body(uploaded, forget={"class": 4}), headers={"Idempotency-Key": "run-42"}
    )
    assert other.status_code == 422 and other.json()["code"] == "idempotency-key-reused"
    # another tenant's identical key is independent (and here fails validation: not its artifacts)
    assert (
        client_b.post("/v1/jobs", json=body, headers={"Idempotency-Key": "run-42"}).json()["code"]
        == "validation-error"
    )


def test_failed_validation_does_not_consume_the_key(client_a, uploaded):
    bad = client_a.post(
        "/v1/jobs", json=remove_body(uploaded, forget={"class": 99}), headers={"Idempotency-Key": "k-7"}
    )
    assert bad.status_code == 422
    good = client_a.post("/v1/jobs", json=remove_body(uploaded), headers={"Idempotency-Key": "k-7"})
    assert good.status_code == 202 and "idempotent-replayed" not in good.headers
    assert (
        client_a.post(
            "/v1/jobs", json=remove_body(uploaded), headers={"Idempotency-Key": "bad key"}
        ).status_code
        == 422
    )


def test_list_pagination_and_status_filter(client_b, files):
    from .conftest import upload

    ids = {
        k: upload(client_b, files[k], kind).json()["id"]
        for k, kind in (("checkpoint", "checkpoint"), ("train", "dataset"))
    }
    uploaded = {"checkpoint": {"id": ids["checkpoint"]}, "train": {"id": ids["train"]}}
    created = [client_b.post("/v1/jobs", json=remove_body(uploaded)).json()["id"] for _ in range(5)]
    client_b.post(f"/v1/jobs/{created[0]}/cancel")
    seen, after = [], None
    while True:
        page = client_b.get("/v1/jobs", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == list(reversed(created))
    cancelled = client_b.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["data"]] == [created[0]]
    assert client_b.get("/v1/jobs", params={"limit": 101}).status_code == 422
    assert client_b.get("/v1/jobs", params={"after": "job_nope"}).status_code == 422


def test_events_and_cancel(app, client_a, uploaded):
    job = client_a.post("/v1/jobs", json=remove_body(uploaded)).json()
    events = client_a.get(f"/v1/jobs/{job['id']}/events").json()
    assert [e["type"] for e in events["data"]] == ["job.created", "job.queued"]
    page = client_a.get(f"/v1/jobs/{job['id']}/events", params={"after": events["first_id"]}).json()
    assert [e["type"] for e in page["data"]] == ["job.queued"]
    first = client_a.post(f"/v1/jobs/{job['id']}/cancel")
    assert (
        first.status_code == 202
        and first.json()["status"] == "cancelled"
        and first.json()["cancel_requested_at"]
    )
    assert client_a.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202  # idempotent
    # a succeeded job cannot be cancelled
    other = client_a.post("/v1/jobs", json=remove_body(uploaded)).json()
    services = app.state.services
    with services.db.begin() as session:
        lease = store.claim(session, other["id"], "test", 60)
        assert store.finish_succeeded(session, lease, {"artifacts": [], "summary": {}})
    refused = client_a.post(f"/v1/jobs/{other['id']}/cancel")
    assert refused.status_code == 409 and refused.json()["code"] == "job-not-cancellable"
    assert client_a.get(f"/v1/jobs/{other['id']}").json()["status"] == JobStatus.SUCCEEDED


def test_openapi_documents_job_body_examples(client_a):
    spec = client_a.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert {"remove_class", "relabel", "scores"} <= set(body["examples"])
    assert "multipart/form-data" in spec["paths"]["/v1/artifacts"]["post"]["requestBody"]["content"]
