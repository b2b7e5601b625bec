"""The per-call time budget (handler/scheduler.py), without TorchServe: chunks of at most one
micro-batch, predictions before explanations, refusals once the next chunk would end past the
budget, and estimates that follow what chunks really took."""
import time

from handler.scheduler import Scheduler, estimated_tokens


def scheduler(seconds_per_token=1e-6, max_call_seconds=10.0, explain_cost=10.0):
    return Scheduler(max_call_seconds, seconds_per_token, explain_cost, micro_batch_size=4,
                     token_budget=64, max_length=32)


def recorder(calls: list, sleep: float = 0.0):
    def answer(keys):
        calls.append(list(keys))
        time.sleep(sleep)
        return {key: f"answer {key}" for key in keys}
    return answer


def test_everything_fits_in_chunks_of_at_most_one_micro_batch():
    calls = []
    requests = {i: ["a short review"] * (1 + i % 3) for i in range(10)}
    answers, refused = scheduler().run(requests, set(), time.perf_counter(), recorder(calls))
    assert refused == [] and answers == {i: f"answer {i}" for i in range(10)}
    assert sorted(key for call in calls for key in call) == list(range(10))
    for call in calls:
        assert sum(len(requests[key]) for key in call) <= 4 or len(call) == 1


def test_predictions_are_answered_before_explanations_in_arrival_order():
    calls = []
    requests = {0: ["explain me"], 1: ["plain"], 2: ["explain me too"], 3: ["plain too"]}
    scheduler().run(requests, {0, 2}, time.perf_counter(), recorder(calls))
    order = [key for call in calls for key in call]
    assert order == [1, 3, 0, 2]


def test_what_would_end_past_the_budget_is_refused_but_the_first_chunk_is_answered():
    calls = []
    # 1 s per token: the first chunk always runs (a call must answer something), the next
    # chunks' estimates end far past a 0.5 s budget
    slow = scheduler(seconds_per_token=1.0, max_call_seconds=0.5)
    requests = {i: ["x" * 60] * 4 for i in range(3)}
    answers, refused = slow.run(requests, set(), time.perf_counter(), recorder(calls))
    assert list(answers) == [0] and refused == [1, 2]
    assert calls == [[0]]


def test_an_explanation_weighs_explain_cost_predictions():
    plain = scheduler(explain_cost=7.0)
    text = "a review of some length"
    assert plain.work([text], True) == 7.0 * plain.work([text], False)
    assert plain.work([text], False) == estimated_tokens(text, 32)
    assert estimated_tokens("x" * 10_000, 32) == 32  # never more than the encoder reads


def test_estimates_move_halfway_to_what_chunks_took():
    learning = scheduler(seconds_per_token=1e-3, explain_cost=10.0)
    learning.learn(elapsed=0.3, tokens=100, explained=0)  # 3 ms a token measured
    assert abs(learning.seconds_per_token - 2e-3) < 1e-12
    # 100 tokens of work, all explanations at a cost of 10: 10 tokens of text. They took
    # 0.6 s, 30 times the 20 ms their prediction takes at 2 ms a token: halfway from 10 to 30
    learning.learn(elapsed=0.6, tokens=100, explained=100)
    assert abs(learning.explain_cost - 20.0) < 1e-9
