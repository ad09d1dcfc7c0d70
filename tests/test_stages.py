"""The stages: one Stage (agent.schema) for the builder, the agent and the master."""

import pytest

from agent import protocol as p
from agent.schema import Stage
from beoboot import stages


def test_one_stage_in_boot_order():
    assert p.Stage is Stage and stages.Stage is Stage
    assert [s.value for s in Stage] == ["stage1", "stage2", "stage3", "envroot"]
    assert [s.order for s in Stage] == [0, 1, 2, 3]
    assert [s.number for s in Stage] == [1, 2, 3, None]
    assert Stage.with_agent() == (Stage.BOOSTER, Stage.PXE, Stage.SUPERVISOR)
    assert [s.stage for s in stages.all_stages()] == list(Stage)


def test_a_node_reports_only_the_stages_that_run_the_agent():
    for stage in Stage.with_agent():
        assert p.from_json(p.Heartbeat, p.to_json(p.Heartbeat("52:54:00:12:34:56", stage))).stage is stage
    with pytest.raises(p.ProtocolError, match="'envroot' is not one of stage1, stage2, stage3"):
        p.from_json(p.Heartbeat, '{"mac": "52:54:00:12:34:56", "stage": "envroot"}')
