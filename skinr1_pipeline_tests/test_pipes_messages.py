"""The Pipes message reader hands Dagster whole JSON lines only, and loses nothing written before the stop."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from skinr1_pipeline.defs.pipes_messages import CompleteLineReader, LineSafeFileMessageReader, follow


def test_partial_lines_wait_for_their_newline():
    lines = CompleteLineReader()
    assert lines.feed('{"a": 1}\n{"b": ') == ['{"a": 1}']
    assert lines.feed("2") == []
    assert lines.feed('}\n\n{"c": 3}\n') == ['{"b": 2}', '{"c": 3}']  # blank lines are not messages
    assert lines.feed('{"d": 4}') == [] and lines.finish() == ['{"d": 4}'] and lines.finish() == []


def test_follow_reads_messages_written_in_fragments_and_drains_after_stop(tmp_path):
    path = tmp_path / "messages.jsonl"
    path.write_text("")
    messages = [json.dumps({"method": "log", "params": {"message": "é" * n}}) + "\n" for n in range(1, 60)]
    stop = threading.Event()
    got: list[dict] = []

    def writer() -> None:
        with open(path, "a", encoding="utf-8") as out:
            for text in messages:
                for piece in (text[:7], text[7 : len(text) // 2], text[len(text) // 2 :]):  # a read can land anywhere
                    out.write(piece)
                    out.flush()
                    time.sleep(0.001)
            out.write(json.dumps({"method": "last"}) + "\n")  # written right before the session closes
        stop.set()

    with open(path, encoding="utf-8") as stream:
        thread = threading.Thread(target=writer)
        thread.start()
        follow(stream, stop.is_set, lambda line: got.append(json.loads(line)), poll_seconds=0.0005)
        thread.join()
    assert [m["params"]["message"] for m in got[:-1]] == [json.loads(m)["params"]["message"] for m in messages]
    assert got[-1] == {"method": "last"}


def test_an_unreadable_line_is_reported_and_the_rest_still_read(tmp_path):
    class Handler:
        def __init__(self) -> None:
            self.messages: list[dict] = []
            self.errors: list[str] = []

        def handle_message(self, message: dict) -> None:
            self.messages.append(message)

        def report_pipes_framework_exception(self, origin: str, exc_info) -> None:
            self.errors.append(origin)

    handler = Handler()
    reader = LineSafeFileMessageReader()
    with reader.read_messages(handler) as params:
        with open(params["path"], "a", encoding="utf-8") as out:
            out.write('{"method": "log"}\nnot json at all\n{"method": "report_asset_materialization"}\n')
    assert handler.messages == [{"method": "log"}, {"method": "report_asset_materialization"}]
    assert len(handler.errors) == 1 and "not json at all" in handler.errors[0]


def test_dagster_receives_every_message_through_the_reader(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(
        "from dagster_pipes import open_dagster_pipes\n"
        "with open_dagster_pipes() as pipes:\n"
        "    for i in range(200):\n"
        "        pipes.log.info('progress ' + str(i) + ' ' + 'x' * 300)\n"
        "    pipes.report_asset_materialization(metadata={'lines': 200})\n"
    )

    @dg.asset(required_resource_keys={"pipes"})
    def child(context):
        return context.resources.pipes.run(
            command=[sys.executable, str(script)], context=context
        ).get_materialize_result()

    client = dg.PipesSubprocessClient(message_reader=LineSafeFileMessageReader())
    result = dg.materialize([child], resources={"pipes": client}, raise_on_error=True)
    events = result.asset_materializations_for_node("child")
    assert events[0].metadata["lines"].value == 200


def test_the_pipeline_launches_training_through_the_line_safe_reader(monkeypatch):
    from skinr1_pipeline.definitions import defs
    from skinr1_pipeline.defs.compute import ComputeStep, LocalCompute

    seen = {}

    def run(self, command, context, env):
        seen["reader"] = self.message_reader
        raise RuntimeError("stop here")

    monkeypatch.setattr(dg.PipesSubprocessClient, "run", run)
    compute = defs.resources["compute"]
    assert isinstance(compute, LocalCompute)
    with pytest.raises(RuntimeError, match="stop here"):
        compute.run(dg.build_asset_context(), ComputeStep(module="m", args=[], workdir=Path("/tmp/skinr1-reader")))
    assert isinstance(seen["reader"], LineSafeFileMessageReader)
