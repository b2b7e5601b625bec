"""The time budget of one handler call: TorchServe kills a worker whose call outlives
responseTimeout and fails every request in it, so a call answers what fits in
`max_call_seconds` and refuses the rest (503 + Retry-After) instead.

Requests are answered in chunks of about one micro-batch of texts, in arrival order, predictions
before explanations (a cheap request never waits behind an expensive one), while the next chunk
is expected to end in time. The expectation is a cost per token, seeded by the warm-up and then
a moving average of what each chunk really took; an explanation weighs `explain_cost`
predictions of its text, a factor measured the same way.
"""
import time


def estimated_tokens(text: str, max_length: int) -> int:
    """A cheap upper-bound guess of a text's tokens (WordPiece averages > 3 characters a token)."""
    return min(max_length, len(text) // 3 + 2)


class Scheduler:
    def __init__(self, max_call_seconds: float, seconds_per_token: float, explain_cost: float,
                 micro_batch_size: int, token_budget: int, max_length: int):
        self.max_call_seconds = max_call_seconds
        self.seconds_per_token = seconds_per_token
        self.explain_cost = explain_cost
        self.micro_batch_size = micro_batch_size
        self.max_length = max_length
        # an explanation weighs explain_cost predictions: a chunk is never more work than a
        # full micro-batch of predictions
        self.chunk_tokens = max(token_budget, micro_batch_size * max_length)

    def work(self, texts: list[str], explanation: bool) -> float:
        """A request's estimated work, in predicted tokens."""
        tokens = sum(estimated_tokens(text, self.max_length) for text in texts)
        return tokens * (self.explain_cost if explanation else 1)

    def run(self, requests: dict, explanations: set, started: float, answer) -> tuple[dict, list]:
        """`requests` maps a request's key to its texts; `answer(keys)` answers some of them,
        a dict key -> answer. Returns (the answers, the keys refused for lack of time)."""
        pending = sorted(requests, key=lambda key: key in explanations)
        deadline = started + self.max_call_seconds
        answers = {}
        while pending:
            chunk, texts, tokens, explained = [], 0, 0.0, 0.0
            while pending and (not chunk or (
                    texts + len(requests[pending[0]]) <= self.micro_batch_size
                    and tokens + self.work(requests[pending[0]], pending[0] in explanations)
                    <= self.chunk_tokens)):
                key = pending.pop(0)
                work = self.work(requests[key], key in explanations)
                chunk.append(key)
                texts += len(requests[key])
                tokens += work
                explained += work if key in explanations else 0
            if answers and time.perf_counter() + tokens * self.seconds_per_token > deadline:
                return answers, [*chunk, *pending]
            chunk_started = time.perf_counter()
            answers.update(answer(chunk))
            self.learn(time.perf_counter() - chunk_started, tokens, explained)
        return answers, []

    def learn(self, elapsed: float, tokens: float, explained: float) -> None:
        """Move the estimates halfway to what a chunk of `tokens` (of which `explained` were
        explanations) really took."""
        if explained:  # the explanations' share calibrates their cost factor
            plain_seconds = (tokens - explained) * self.seconds_per_token
            factor = max(elapsed - plain_seconds, 0.0) * self.explain_cost / (
                explained * self.seconds_per_token)
            self.explain_cost = 0.5 * self.explain_cost + 0.5 * max(factor, 1.0)
        else:
            measured = elapsed / max(tokens, 1)
            self.seconds_per_token = 0.5 * self.seconds_per_token + 0.5 * measured
