"""The retry budget, rule by rule (the AWS SDKs' standard retry quota)."""

from __future__ import annotations

import pytest

from uploader.retry_budget import RetryBudget

pytestmark = pytest.mark.timeout(10)


def test_starts_full():
    budget = RetryBudget()
    assert budget.available == budget.capacity == 500


def test_a_retry_costs_five_and_a_timeout_retry_ten():
    budget = RetryBudget()
    assert budget.try_acquire() == 5
    assert budget.available == 495
    assert budget.try_acquire(timeout=True) == 10
    assert budget.available == 485


def test_retries_are_refused_when_the_budget_is_short():
    budget = RetryBudget(capacity=12)
    assert budget.try_acquire() == 5
    assert budget.try_acquire() == 5
    assert budget.try_acquire() is None  # 2 left, a retry costs 5
    assert budget.try_acquire(timeout=True) is None
    assert budget.available == 2
    assert budget.refused == 2


def test_a_cheaper_retry_can_pass_where_a_timeout_retry_cannot():
    budget = RetryBudget(capacity=7)
    assert budget.try_acquire(timeout=True) is None
    assert budget.try_acquire() == 5


def test_a_first_try_success_gives_back_one():
    budget = RetryBudget()
    budget.try_acquire()
    budget.on_success()
    assert budget.available == 496


def test_a_successful_retry_gives_back_its_cost():
    budget = RetryBudget()
    cost = budget.try_acquire(timeout=True)
    budget.on_success(retry_cost=cost)
    assert budget.available == 500


def test_refills_never_exceed_the_capacity():
    budget = RetryBudget()
    for _ in range(10):
        budget.on_success()
    budget.on_success(retry_cost=10)
    assert budget.available == 500


def test_an_outage_drains_the_budget_and_successes_refill_it():
    budget = RetryBudget()
    granted = 0
    while budget.try_acquire() is not None:
        granted += 1
    assert granted == 100  # 500 / 5: then every failure fails without a retry
    for _ in range(5):
        budget.on_success()
    assert budget.try_acquire() == 5  # five first-try successes buy one retry


def test_rejects_negative_settings():
    with pytest.raises(ValueError, match="retry_cost"):
        RetryBudget(retry_cost=-1)
