"""The benchmark runs end to end on tiny settings (its timings are measured, never asserted)."""

from lmkit.bench import bench_decode, bench_training


def test_bench_decode_compares_the_same_tokens():
    r = bench_decode(max_new_tokens=8, rounds=1)
    assert r["vs_transformers"]["same_tokens"] and r["cache_vs_no_cache"]["same_tokens"]
    assert r["vs_transformers"]["new_tokens"] == 8 and r["cache_vs_no_cache"]["speedup"] > 0


def test_bench_training_reports_both_libraries():
    r = bench_training(
        steps=1, n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2, vocab_size=32
    )
    assert r["lmkit_tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0 and r["ratio"] > 0
