"""bpsh -s / -d: each node's output whole, in node order (beoboot.master.bpsh.sequential)."""

from beoboot.master.bpsh.sequential import SequentialOutput

OUT, ERR = 1, 2


def test_the_first_node_streams_and_the_others_wait_their_turn():
    seq = SequentialOutput()
    assert seq.start([3, 1, 2]) == []
    assert seq.output(3, OUT, b"three\n") == [] and seq.output(2, ERR, b"two\n") == []
    assert seq.output(1, OUT, b"one\n") == [(OUT, b"one\n")]  # the lowest node is live
    assert seq.held == len(b"three\ntwo\n")
    assert seq.ended(3) == []  # ended, but nodes 1 and 2 come first
    assert seq.ended(1) == [(ERR, b"two\n")]  # node 2 is live now, and runs on
    assert seq.output(2, OUT, b"more\n") == [(OUT, b"more\n")]
    assert seq.ended(2) == [(OUT, b"three\n")]  # node 3 had ended already: written out at once
    assert seq.held == 0


def test_dividers_lead_each_nodes_output():
    seq = SequentialOutput(divider=True)
    assert seq.start([0, 1]) == [(OUT, b"---- node 0 ----\n")]
    seq.output(1, OUT, b"b\n")
    assert seq.ended(0) == [(OUT, b"---- node 1 ----\n"), (OUT, b"b\n")]
    assert seq.ended(1) == []


def test_a_node_waiting_behind_another_is_told_to_wait_past_the_limit():
    seq = SequentialOutput()
    seq.start([0, 1])
    seq.output(1, OUT, b"x" * 100)
    assert seq.must_wait(1, 99) and not seq.must_wait(1, 100) and not seq.must_wait(0, 0)
    seq.ended(0)
    assert not seq.must_wait(1, 0)  # live now


def test_output_of_a_node_the_session_did_not_start_goes_through():
    """An error before any job started (no such node) is written as it comes."""
    seq = SequentialOutput()
    assert seq.output(0, ERR, b"bpsh: node 9 is not up\n") == [(ERR, b"bpsh: node 9 is not up\n")]
    assert seq.ended(0) == []
