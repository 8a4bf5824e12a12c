"""The progress bar: right numbers, throttled, never dividing by zero."""

from skinr1_pipeline.progress import LogProgress, text_bar


def test_text_bar_shows_fraction_rate_and_eta() -> None:
    line = text_bar(40, 100, 4.0, unit="img", width=10)
    assert line.startswith("[####......] 40/100 (40%) 10.0 img/s, 4s elapsed, ETA 6s")
    assert text_bar(0, 0, 0.0).startswith("[" + "#" * 20 + "] 0/0 (100%) ? it/s")
    assert "ETA 0s" in text_bar(5, 5, 1.0)
    assert "ETA ?" in text_bar(0, 10, 0.0)
    assert "ETA 1h23m" in text_bar(1, 5001, 1.0)


def test_log_progress_throttles_but_keeps_first_and_last() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = LogProgress("eval", lines.append, every_s=10, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 0.5  # 50 s in all: first, then one line per 10 s, then the last
        progress(done, 100)
    assert lines[0].startswith("eval [") and "1/100" in lines[0]
    assert "100/100 (100%)" in lines[-1]
    assert len(lines) == 6  # t = 0.5, 10.5, 20.5, 30.5, 40.5, then the last at 50


def test_synthesis_reports_progress_per_generated_batch(tax, ddx, kb) -> None:
    import pandas as pd

    from skinr1_pipeline.synthesis.generators import TemplateGenerator
    from skinr1_pipeline.synthesis.pipeline import synthesize

    samples = pd.DataFrame(
        [
            {
                "sample_id": f"x/{i}",
                "source_dataset": "x",
                "image_path": f"/img/{i}.jpg",
                "taxonomy_node": node,
                "bucket": tax[node].bucket,
                "split": "train",
            }
            for i, node in enumerate(["melanoma", "basal_cell_carcinoma", "dermatofibroma"] * 3)
        ]
    )
    calls: list[tuple[int, int]] = []
    result = synthesize(
        samples,
        tax,
        ddx,
        kb,
        TemplateGenerator(),
        types=("hierarchy",),
        batch_size=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert result.counts["requests"] == 9
    assert calls == [(4, 9), (8, 9), (9, 9)]


def test_detail_rides_along_with_the_bar() -> None:
    lines: list[str] = []
    LogProgress("SFT", lines.append, unit="step")(5, 10, '{"loss": 1.5}')
    assert lines[0].startswith("SFT [") and "5/10 (50%)" in lines[0] and lines[0].endswith('{"loss": 1.5}')
