"""Log volume with the shipped serving/log4j2.xml: a busy service must not write gigabytes of
logs a day. TorchServe's own configuration logs its frontend at DEBUG (RestJob and
BatchAggregator lines for every request) and copies every access, metrics and worker line into
ts_log.log and onto stdout as well. Ours: one access line per request, the frontend at INFO
(TS_LOG_LEVEL raises it), each line in one file."""
import time

import pytest

from harness.http import TEXT, post

pytestmark = pytest.mark.serve
LOGS = ("access_log", "ts_log", "model_log")
REQUESTS = 40


def lines(server) -> dict:
    return {name: server.log(name).splitlines() for name in LOGS}


def test_a_request_writes_one_access_line_and_no_debug(torchserve):
    post(torchserve, "A warm-up review.", TEXT)
    time.sleep(1)
    before = lines(torchserve)
    for i in range(REQUESTS):
        assert post(torchserve, f"Review number {i}: a fine film.", TEXT).status_code == 200
    time.sleep(2)  # log4j2 flushes its files asynchronously to the answers
    new = {name: text[len(before[name]):] for name, text in lines(torchserve).items()}
    counts = {name: len(text) for name, text in new.items()}
    print("lines written for", REQUESTS, "requests:", counts)
    assert counts["access_log"] == REQUESTS
    assert counts["ts_log"] <= REQUESTS // 10, new["ts_log"][:10]
    assert not any("[DEBUG]" in line for line in new["ts_log"] + new["model_log"])
    assert not any("/predictions/" in line for line in new["ts_log"])  # no access copies
    assert counts["model_log"] <= REQUESTS // 10, new["model_log"][:10]
