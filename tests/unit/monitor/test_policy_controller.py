"""Policy rules with persistence, and the controller: idempotent, bounded, failing safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigFileError
from monitor.controller import Controller, ControllerLimits
from monitor.policy import DEFAULT_POLICY, Policy, PolicyEngine, Rule, load_policy
from printer_io.errors import PauseNotConfirmed
from printer_io.messages import ActionMessage
from printer_io.printer import PrinterState
from printer_io.virtual import VirtualPrinter


def rule(**kw: object) -> Rule:
    fields: dict[str, object] = {"name": "r", "metric": "warping_growth_mm", "above": 0.3, "k": 3, "n": 3}
    fields.update(kw)
    return Rule.model_validate(fields)


def test_persistence_k_of_n() -> None:
    engine = PolicyEngine(Policy(rules=(rule(k=2, n=3),)))
    values = [0.5, 0.0, 0.5, 0.0, 0.0, 0.5]
    fired = [bool(engine.evaluate(i, {"warping_growth_mm": v}, [])) for i, v in enumerate(values)]
    assert fired == [False, False, True, False, False, False]


def test_bad_frames_neither_count_nor_break_a_streak() -> None:
    engine = PolicyEngine(Policy(rules=(rule(),)))
    assert not engine.evaluate(0, {"warping_growth_mm": 1.0}, [])
    assert not engine.evaluate(1, {"warping_growth_mm": 1.0}, [])
    assert not engine.evaluate(2, {"warping_growth_mm": 99.0}, [], judged=False)  # blurry frame
    hits = engine.evaluate(3, {"warping_growth_mm": 1.0}, [])
    assert [h.window for h in hits] == [(True, True, True)]


def test_regions_part_and_each_part() -> None:
    engine = PolicyEngine(
        Policy(
            rules=(
                rule(name="in-parts", metric="porosity_fraction", above=0.01, k=1, n=1, region="part"),
                rule(name="per-part", metric="warping_area_mm2", above=1.0, k=1, n=1, region="each_part"),
                rule(name="part-2", metric="pore_count", above=0, k=1, n=1, region="part:2"),
            )
        )
    )
    parts = [
        {"part_id": 1, "warping_area_mm2": 0.5, "pore_count": 3},
        {"part_id": 2, "warping_area_mm2": 2.0, "pore_count": 1},
    ]
    hits = engine.evaluate(0, {"porosity_fraction_part": 0.02, "porosity_fraction": 0.0}, parts)
    assert sorted(h.key for h in hits) == ["in-parts", "part-2@part2", "per-part@part2"]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"metric": "warp"}, "metric 'warp' does not exist for region 'anywhere'; valid: part_count"),
        ({"metric": "pore_count", "region": "part"}, "metric 'pore_count' does not exist for region 'part'"),
        ({"region": "bed"}, "region 'bed' is not one of"),
        ({"k": 4, "n": 3}, "k must be <= n"),
        ({"above": None}, "exactly one of 'above' or 'below'"),
        ({"actions": [{"type": "gcode", "command": "M104", "step_pct": 2, "max_total_pct": 5}]}, "command"),
    ],
)
def test_bad_rules_say_what_is_wrong(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        rule(**fields)


def test_default_policy_loads_and_a_bad_policy_file_names_itself(tmp_path: Path) -> None:
    assert [r.name for r in load_policy(DEFAULT_POLICY).rules][:2] == ["warping-persists", "warping-grows"]
    bad = tmp_path / "p.toml"
    bad.write_text('[[rules]]\nname = "x"\nmetric = "nope"\nabove = 1\n')
    with pytest.raises(ConfigFileError, match=r"p.toml: \[policy\] rules.0: .*metric 'nope' does not exist"):
        load_policy(bad)


class Sink:
    def __init__(self) -> None:
        self.actions: list[ActionMessage] = []
        self.events: list[tuple[str, str, str, int]] = []

    def action(self, msg: ActionMessage) -> None:
        self.actions.append(msg)

    def event(self, level: str, code: str, message: str, layer: int) -> None:
        self.events.append((level, code, message, layer))

    def states(self, action: str) -> list[str]:
        return [m.state.value for m in self.actions if m.action == action]


def controller(printer: object, sink: Sink, **limits: object) -> Controller:
    c = Controller(
        printer,  # type: ignore[arg-type]
        printer_id="p1",
        emit_action=sink.action,
        emit_event=sink.event,
        limits=ControllerLimits(**limits),  # type: ignore[arg-type]
    )
    c.new_build("job-1", "model-abc")
    return c


def hits_for(engine: PolicyEngine, layer: int, value: float) -> list:  # type: ignore[type-arg]
    return engine.evaluate(layer, {"warping_growth_mm": value}, [])


def test_one_pause_per_incident_and_redelivery_does_not_act_twice() -> None:
    printer = VirtualPrinter("v", layers=100, layer_time_s=1, realtime=False).start()
    printer.start_job()
    sink = Sink()
    c = controller(printer, sink)
    engine = PolicyEngine(Policy(rules=(rule(actions=[{"type": "pause"}]),)))
    for layer in range(6):
        c.decide(layer, hits_for(engine, layer, 1.0), {"warping_growth_mm": 1.0})
    assert c.decide(5, hits_for(engine, 5, 1.0), {}) == []  # the same layer again
    c.wait_idle()
    assert sink.states("pause") == ["requested", "confirmed"]
    first = sink.actions[0]
    assert (
        first.rule == "r" and first.layer == 2 and first.model == "model-abc" and "warping_growth_mm" in first.metrics
    )
    assert first.request_id == "job-1:2:r:pause"
    assert printer.status().state == PrinterState.PAUSED
    c.close()


def test_after_an_operator_resume_only_growth_pauses_again() -> None:
    printer = VirtualPrinter("v", layers=100, layer_time_s=1, realtime=False).start()
    printer.start_job()
    sink = Sink()
    c = controller(printer, sink, regrow_factor=1.5)
    engine = PolicyEngine(Policy(rules=(rule(k=1, n=1, actions=[{"type": "pause"}]),)))
    c.decide(0, hits_for(engine, 0, 1.0), {})
    c.wait_idle()
    printer.resume()
    c.decide(1, hits_for(engine, 1, 1.2), {}, printer.status().state)  # operator resumed; 1.2 < 1.5
    c.decide(2, hits_for(engine, 2, 1.4), {}, printer.status().state)
    c.wait_idle()
    assert sink.states("pause") == ["requested", "confirmed"]
    c.decide(3, hits_for(engine, 3, 1.6), {}, printer.status().state)  # grown by 1.5x: pause again
    c.wait_idle()
    assert sink.states("pause") == ["requested", "confirmed", "requested", "confirmed"]
    c.close()


def test_gcode_adjustments_are_bounded() -> None:
    printer = VirtualPrinter("v", layers=100, layer_time_s=1, realtime=False).start()
    printer.start_job()
    sink = Sink()
    c = controller(printer, sink, cooldown_layers=0)
    r = rule(metric="porosity_fraction", region="part", above=0.01, k=1, n=1,
             actions=[{"type": "gcode", "command": "M221", "step_pct": 2, "max_total_pct": 6}])  # fmt: skip
    engine = PolicyEngine(Policy(rules=(r,)))
    for layer in range(6):
        c.decide(layer, engine.evaluate(layer, {"porosity_fraction_part": 0.05}, []), {})
    c.wait_idle()
    sent = [m.gcode for m in sink.actions if m.state.value == "requested"]
    assert sent == [["M221 S102"], ["M221 S104"], ["M221 S106"]]
    assert sink.states("gcode").count("skipped") == 1  # said once that the bound is reached
    assert printer.status().flow_pct == 106
    c.close()


def test_an_unconfirmed_pause_is_a_timed_out_outcome_and_a_critical_event() -> None:
    class Stuck:
        supports_exclude_object = False

        def pause(self, timeout_s: float = 30.0) -> None:
            raise PauseNotConfirmed("p1: pause not confirmed after 2 attempt(s) of 1 s; last state printing")

    sink = Sink()
    c = controller(Stuck(), sink)
    engine = PolicyEngine(Policy(rules=(rule(k=1, n=1, actions=[{"type": "pause"}]),)))
    c.decide(0, hits_for(engine, 0, 1.0), {})
    c.wait_idle()
    assert sink.states("pause") == ["requested", "timed_out"]
    assert ("critical", "pause_not_confirmed") in [(e[0], e[1]) for e in sink.events]
    c.close()


def test_a_failing_controller_takes_no_action_and_says_so() -> None:
    sink = Sink()
    c = controller(None, sink)
    engine = PolicyEngine(Policy(rules=(rule(k=1, n=1, actions=[{"type": "pause"}]),)))
    out = c.decide(0, hits_for(engine, 0, 1.0), {"warping_growth_mm": "not a number"})  # type: ignore[dict-item]
    assert out == [] and sink.actions == []
    assert sink.events[-1][:2] == ("critical", "controller_failed")
    c.close()


def test_the_evidence_is_located_for_the_actions_only_and_kept_by_request() -> None:
    sink = Sink()
    c = controller(None, sink)
    engine = PolicyEngine(Policy(rules=(rule(k=1, n=1, actions=[{"type": "pause"}]),)))
    asked = []

    def locate(hit: object) -> tuple[tuple[int, int, int, int], ...]:
        asked.append(hit)
        return ((10, 20, 30, 40),)

    for layer in range(3):
        c.decide(layer, hits_for(engine, layer, 1.0), {"warping_growth_mm": 1.0}, locate=locate)
    c.wait_idle()
    assert len(asked) == 1  # one pause per incident: the later hits are not located
    assert {m.request_id for m in sink.actions} == {"job-1:0:r:pause"}
    assert c.where("job-1:0:r:pause") == ((10, 20, 30, 40),) and c.where("job-1:1:r:pause") == ()
    c.new_build("job-2", "m")
    assert c.where("job-1:0:r:pause") == ()
    c.close()


def test_evidence_that_cannot_be_located_never_stops_the_pause() -> None:
    sink = Sink()
    c = controller(None, sink)
    engine = PolicyEngine(Policy(rules=(rule(k=1, n=1, actions=[{"type": "pause"}]),)))

    def locate(hit: object) -> tuple[tuple[int, int, int, int], ...]:
        raise ValueError("a bug in the evidence")

    out = c.decide(0, hits_for(engine, 0, 1.0), {"warping_growth_mm": 1.0}, locate=locate)
    assert [m.action for m in out] == ["pause"] and c.where(out[0].request_id) == ()
    assert not any(code == "controller_failed" for _, code, _, _ in sink.events)
    c.close()


def test_after_a_resume_another_rule_on_the_same_defect_needs_growth_too() -> None:
    printer = VirtualPrinter("v", layers=100, layer_time_s=1, realtime=False).start()
    printer.start_job()
    sink = Sink()
    c = controller(printer, sink, regrow_factor=1.5)
    grows = rule(name="grows", k=1, n=1, actions=[{"type": "pause"}])
    large = rule(name="large", metric="warping_area_mm2", above=25, k=1, n=1, actions=[{"type": "pause"}])
    engine = PolicyEngine(Policy(rules=(grows, large)))

    def layer(n: int, growth: float, area: float) -> None:
        m = {"warping_growth_mm": growth, "warping_area_mm2": area}
        c.decide(n, engine.evaluate(n, m, []), m, printer.status().state)
        c.wait_idle()

    layer(0, 1.0, 10.0)  # "grows" pauses
    printer.resume()
    layer(1, 0.0, 20.0)  # the operator resumed: baseline area 20
    layer(2, 0.0, 26.0)  # "large" holds, but 26 < 1.5 x 20
    assert sink.states("pause") == ["requested", "confirmed"]
    layer(3, 0.0, 31.0)  # 31 >= 30: grown since the operator looked
    assert sink.states("pause") == ["requested", "confirmed", "requested", "confirmed"]
    c.close()


def test_incidents_are_restored_from_the_record_after_a_restart() -> None:
    printer = VirtualPrinter("v", layers=100, layer_time_s=1, realtime=False).start()
    printer.start_job()
    printer.pause()
    sink = Sink()
    c = controller(printer, sink)
    c.restore([{"action": "pause", "state": "confirmed", "incident": "job-1:r:4", "rule": "r", "layer": 4}])
    c.restore_handled([0, 1, 2, 3, 4])
    engine = PolicyEngine(Policy(rules=(rule(k=1, n=1, actions=[{"type": "pause"}]),)))
    assert c.decide(4, hits_for(engine, 4, 1.0), {}) == []  # judged before the restart
    assert c.decide(5, hits_for(engine, 5, 1.0), {}, PrinterState.PAUSED) == []  # still paused: same incident
    c.close()
