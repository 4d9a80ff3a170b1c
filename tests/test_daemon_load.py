"""Under load: records from many messages packed into few calls, within every limit."""

from harness import EmulatorProcess


async def test_3000_single_record_requests_in_at_most_11_calls(coderd, broker):
    async with EmulatorProcess(rate=1.0, latency=0.05) as api:
        await coderd(api)
        for i in range(3000):
            await broker.publish({"topic": "anzsco", "record": {"recordId": str(i), "occp_text": "truck driver",
                                                                 "tasks_text": f"delivering loads {i}"}},
                                 correlation_id=f"c{i}")
        replies = await broker.replies(3000, timeout=120)
        assert sorted(cid for cid, _ in replies) == sorted(f"c{i}" for i in range(3000))
        assert all(r["status"] == "completed" and r["record"]["recordId"] == cid[1:] for cid, r in replies)
        assert api.stats.coding_calls <= 11, api.stats.records_per_call
        assert api.stats.records_coded == 3000
        assert api.stats.throttled == 0, api.stats.throttled_gaps
        assert api.stats.token_requests == 1


async def test_a_large_request_on_the_public_tier_goes_in_300_record_calls(coderd, broker):
    async with EmulatorProcess(rate=5.0) as api:
        await coderd(api, requests_per_second=5)
        records = [{"recordId": str(i), "occp_text": "chef", "tasks_text": f"cooking {i}"} for i in range(4000)]
        await broker.publish({"topic": "osca", "records": records}, correlation_id="big")
        [(_, reply)] = await broker.replies(1, timeout=60)
        assert reply["status"] == "completed" and reply["route"] == "sync"
        assert [r["recordId"] for r in reply["records"]] == [str(i) for i in range(4000)]
        assert sorted(api.stats.records_per_call, reverse=True)[:13] == [300] * 13
        assert api.stats.throttled == 0, api.stats.throttled_gaps


async def test_transient_api_failures_are_retried(coderd, broker):
    async with EmulatorProcess(rate=10.0) as api:
        await coderd(api, requests_per_second=10)
        api.faults.force_429 = 2
        api.faults.error_rate = 0.3
        for i in range(20):
            await broker.publish({"topic": "anzsco", "record": {"occp_text": "accountant"}}, correlation_id=f"c{i}")
        replies = await broker.replies(20, timeout=90)
        assert all(r["status"] == "completed" for _, r in replies)
        assert api.stats.throttled == 0, api.stats.throttled_gaps
