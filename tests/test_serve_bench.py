"""``python -m lmkit bench --serve`` (lmkit.serve.bench, chapter 13): the load test runs end to end
on a tiny checkpoint and writes the documented JSON. Only the shape and the counts are checked;
the timings are measured, not tested (they depend on the machine and its load)."""

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import torch  # noqa: E402

from lmkit.checkpoint import save_model  # noqa: E402
from lmkit.cli import build_parser  # noqa: E402
from lmkit.data import CharTokenizer  # noqa: E402
from lmkit.models import GPT, GPTConfig  # noqa: E402
from lmkit.serve.bench import PROMPTS, run_serve_bench  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("".join(PROMPTS) + "abcdefghijklmnopqrstuvwxyz")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    d = tmp_path_factory.mktemp("bench") / "tiny-bench"
    save_model(d, model, tok)
    return d


def test_bench_serve_flag_parses():
    args = build_parser().parse_args(["bench", "--serve", "--out", "x.json"])
    assert args.serve and args.out == "x.json"
    assert not build_parser().parse_args(["bench"]).serve


def test_serve_bench_runs_and_reports(checkpoint):
    result = run_serve_bench(
        str(checkpoint), concurrency=(1, 3), max_tokens=5, requests_per_client=2, repeats=2
    )
    json.dumps(result)  # JSON-ready
    assert result["checkpoint"] == "tiny-bench"
    for mode in ("batching_on", "batching_off"):
        levels = result[mode]
        assert [r["concurrency"] for r in levels] == [1, 3]
        for r in levels:
            assert r["requests"] == r["completed"] == 2 * r["concurrency"]  # the reported run
            assert r["requests_all_runs"] == r["completed_all_runs"] == 2 * r["requests"]
            assert r["tokens"] == 5 * r["requests"]
            assert r["errors"] == {} and r["status_5xx"] == 0
            assert len(r["throughput_runs_tok_s"]) == 2
            assert r["throughput_tok_s"] == max(r["throughput_runs_tok_s"])
            assert r["throughput_tok_s"] > 0
            for key in ("ttft_ms", "tpot_ms", "e2e_ms"):  # tpot may be 0: tokens in one chunk
                p = r[key]
                assert 0 <= p["p50"] <= p["p90"] <= p["p99"] and (key == "tpot_ms" or p["p50"])
    summary = result["summary"]
    assert summary["status_5xx"] == 0 and summary["targets"]["zero_5xx"] is True
    assert set(summary["targets"]) == {
        "speedup_at_least_5x",
        "zero_5xx",
        "single_client_ttft_p50_under_20ms",
    }
