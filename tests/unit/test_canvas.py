"""Canvas → Machinery Signature graphs, byte-compared with what Go's NewChain/NewGroup/NewChord build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from machinery_compat import Machinery, chain, chord, group
from machinery_compat.protocol import Signature

GOLDEN = {c["name"]: c["json"] for c in json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "golden" / "golden.json").read_text())}


@pytest.fixture
def app() -> Machinery:
    # no I/O happens in these tests: building canvases never touches the broker
    app = Machinery(broker="redis://127.0.0.1:1/0")

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    return app


def test_chain_matches_go_new_chain(app: Machinery) -> None:
    add = app.tasks["add"]
    c = chain(add.s(1, 1).set(task_id="task_chain-0001"), add.s(5).set(task_id="task_chain-0002"),
              app.signature("multiply", args=[3], task_id="task_chain-0003"))
    first = c.to_signatures()[0]
    assert first.to_go_json() == GOLDEN["chain_nested"]


def test_pipe_operator_builds_the_same_chain(app: Machinery) -> None:
    add = app.tasks["add"]
    c = (add.s(1, 1).set(task_id="task_chain-0001") | add.s(5).set(task_id="task_chain-0002")
         | app.signature("multiply", args=[3], task_id="task_chain-0003"))
    assert c.to_signatures()[0].to_go_json() == GOLDEN["chain_nested"]


def test_group_members_match_go_new_group(app: Machinery) -> None:
    add = app.tasks["add"]
    g = group(add.s(i, i).set(task_id=f"task_group-000{i}") for i in (1, 2, 3))
    members = g.to_signatures(group_uuid="group_0f3c2b1a-9d8e-4f7a-8b6c-5d4e3f2a1b0c")
    for i, m in enumerate(members):
        assert m.to_go_json() == GOLDEN[f"group_member_{i}"]


def test_chord_member_matches_go_new_chord(app: Machinery) -> None:
    add = app.tasks["add"]
    header = group(add.s(i, i).set(task_id=f"task_group-000{i}") for i in (1, 2, 3))
    body = app.signature("multiply", task_id="chord_5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d")
    members, callback = chord(header, body).to_signatures()
    for m in members:
        m.group_uuid = "group_0f3c2b1a-9d8e-4f7a-8b6c-5d4e3f2a1b0c"
    assert members[0].to_go_json() == GOLDEN["chord_member"]
    assert callback.uuid == "chord_5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


def test_generated_ids(app: Machinery) -> None:
    add = app.tasks["add"]
    members, callback = (group(add.s(1), add.s(2)) | add.s()).to_signatures()
    assert callback.uuid.startswith("chord_") and callback.args is None
    assert all(m.uuid.startswith("task_") for m in members)
    assert members[0].group_uuid.startswith("group_")
    assert members[0].group_uuid == members[1].group_uuid
    assert [m.group_task_count for m in members] == [2, 2]
    steps = (add.s(1) | add.s(2)).to_signatures()
    assert steps[0].on_success == [steps[1]] and steps[1].uuid.startswith("task_")


def test_si_maps_to_the_parents_immutable_flag(app: Machinery) -> None:
    add = app.tasks["add"]
    steps = (add.s(1) | add.si(2) | add.s(3)).to_signatures()
    # Machinery reads Immutable from the task that finished: step 0 must not pass its results
    # to the si() step, step 1 passes its results to step 2.
    assert [s.immutable for s in steps] == [True, False, False]
    members, callback = chord([add.s(1)], add.si(0)).to_signatures()
    assert callback.immutable is True and members[0].chord_callback is callback


def test_options_apply_to_every_task_countdown_to_the_first(app: Machinery) -> None:
    add = app.tasks["add"]
    steps = (add.s(1) | add.s(2).set(queue="own")).to_signatures(queue="q", countdown=10,
                                                                 retry_count=2)
    assert [s.routing_key for s in steps] == ["q", "own"]
    assert steps[0].eta is not None and steps[1].eta is None
    assert [s.retry_count for s in steps] == [2, 2]
    members = group(add.s(1), add.s(2)).to_signatures(countdown=5)
    assert all(m.eta is not None for m in members)


def test_invalid_compositions(app: Machinery) -> None:
    add = app.tasks["add"]
    with pytest.raises(TypeError, match="group inside a chain"):
        chain(add.s(1), group(add.s(2)))
    with pytest.raises(TypeError, match="single task"):
        chord([add.s(1)], chain(add.s(1), add.s(2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        group().to_signatures()


def test_partial_clone_and_repr(app: Machinery) -> None:
    add = app.tasks["add"]
    s = add.s(1).clone([2], queue="x")
    sig: Signature = s.to_signature()
    assert [a.value for a in sig.args or []] == [1, 2] and sig.routing_key == "x"
    assert repr(add.si(1) | add.s(2)) == "add.si(1) | add(2)"
