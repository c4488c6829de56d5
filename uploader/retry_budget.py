"""The retry budget: a token bucket that caps retries when most attempts fail.

Retries help against scattered failures and hurt during an outage, when every
request is retried and the load multiplies. As in the AWS SDKs' standard retry
mode (botocore/retries/quota.py): every retry withdraws tokens (more for
timeouts and connection errors, the costliest failures), every success pays
some back, and when the bucket is empty retries are refused, so the attempt
fails instead (the caller keeps the job for later). With the defaults, a
failure rate above roughly 1 in 6 drains the budget (5 tokens per retry,
1 back per first-try success), while occasional failures never touch it.

One budget is shared by all requests (built once in the wiring). Single event
loop, synchronous: no locking needed.
"""

from __future__ import annotations


class RetryBudget:
    """Tokens for retries. `try_acquire` before a retry, `on_success` after a success."""

    def __init__(self, *, capacity: int = 500, retry_cost: int = 5,
                 timeout_retry_cost: int = 10, success_reward: int = 1) -> None:
        for name, value in (("capacity", capacity), ("retry_cost", retry_cost),
                            ("timeout_retry_cost", timeout_retry_cost),
                            ("success_reward", success_reward)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.capacity = capacity
        self._retry_cost = retry_cost
        self._timeout_retry_cost = timeout_retry_cost
        self._success_reward = success_reward
        self._available = capacity
        self.refused = 0  # retries refused so far, for metrics

    @property
    def available(self) -> int:
        return self._available

    def try_acquire(self, *, timeout: bool = False) -> int | None:
        """Pay for one retry; return its cost, or None (retry refused) if the budget is short.

        `timeout` marks a timeout or connection error, which costs more.
        Keep the returned cost: pass it to `on_success` if the retry succeeds.
        """
        cost = self._timeout_retry_cost if timeout else self._retry_cost
        if cost > self._available:
            self.refused += 1
            return None
        self._available -= cost
        return cost

    def on_success(self, *, retry_cost: int | None = None) -> None:
        """A request succeeded: refund its retry's cost, or reward a first-try success.

        `retry_cost` is what `try_acquire` returned for the attempt that
        succeeded, or None if it succeeded on the first try.
        """
        deposit = self._success_reward if retry_cost is None else retry_cost
        self._available = min(self.capacity, self._available + deposit)
