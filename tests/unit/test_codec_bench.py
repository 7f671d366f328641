"""``python -m bench.codec_bench`` runs and writes its table (a few calls: not a timing)."""

from __future__ import annotations

from pathlib import Path

from bench import codec_bench


def test_the_codec_bench_writes_every_step_and_the_target_row(tmp_path: Path) -> None:
    out = tmp_path / "codec.md"
    assert codec_bench.main(["--number", "50", "--repeat", "2", "--output", str(out)]) == 0
    text = out.read_text()
    for step in (codec_bench.ENCODE, codec_bench.DECODE, "decode, exact decoder",
                 "arguments (`python_args`)"):
        assert f"| {step} | " in text
    assert "| encode + decode, 2-argument Signature (#13) | " in text
    assert "≤ 15 µs" in text
