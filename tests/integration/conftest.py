import pytest
from master_helpers import build_for_master, shared_port


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    """The session's one build whose master is at shared_port(), for the QEMU modules that only read it."""
    return build_for_master(tmp_path_factory, shared_port())
