"""The toy world's test sets and its oracle as a metric plug-in of ``ip2p evaluate``."""

from ip2p.evaluate import PLANES, EvalItem, load_test_set
from ip2p.registry import METRICS, TEST_SETS
from ip2p.toy.testsets import ORACLE, TOY_TEST_SIZE, oracle_verdicts, toy_test_set


def test_registered_names_give_the_same_items_as_the_function():
    assert {"toy", "toy-val", "toy-brief", "toy-val-brief"} <= set(TEST_SETS.names())
    by_name, direct = load_test_set("toy-val-brief:4"), toy_test_set(4, validation=True, brief=True)
    assert [i.id for i in by_name] == [i.id for i in direct] == [f"toy-val-brief-{i:04d}" for i in range(4)]
    assert [i.instruction for i in by_name] == [i.instruction for i in direct]
    assert len(TEST_SETS.get("toy")(None, 5)) == 5  # the limit caps the default size
    assert TOY_TEST_SIZE == 300


def test_the_oracle_judges_items_with_an_edit_and_skips_the_others():
    items = toy_test_set(3)
    inputs = [it.image for it in items]
    exact = oracle_verdicts(items, inputs, [it.target for it in items])
    assert exact == [{"oracle_edit": 1.0, "oracle_preserved": 1.0, "oracle_success": 1.0}] * 3
    undone = oracle_verdicts(items, inputs, inputs)
    assert all(r["oracle_edit"] == 0.0 and r["oracle_success"] == 0.0 for r in undone)
    plain = EvalItem(id="x", image=inputs[0], instruction="anything")
    assert oracle_verdicts([plain], inputs[:1], inputs[:1]) == [{}]
    assert METRICS.get("oracle") is ORACLE and PLANES["oracle"][:2] == ("oracle_edit", "oracle_preserved")
