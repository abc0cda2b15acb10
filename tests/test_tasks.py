import pytest

from lmkit.data.tasks import chinese_number, english_number, number_pairs, number_translation_splits


@pytest.mark.parametrize(
    "n,en,zh",
    [
        (1, "one", "一"),
        (10, "ten", "十"),
        (12, "twelve", "十二"),
        (20, "twenty", "二十"),
        (42, "forty-two", "四十二"),
        (100, "one hundred", "一百"),
        (105, "one hundred and five", "一百零五"),
        (110, "one hundred and ten", "一百一十"),
        (312, "three hundred and twelve", "三百一十二"),
        (1005, "one thousand and five", "一千零五"),
        (1050, "one thousand and fifty", "一千零五十"),
        (1200, "one thousand two hundred", "一千二百"),
        (9999, "nine thousand nine hundred and ninety-nine", "九千九百九十九"),
        (0, "zero", "零"),
    ],
)
def test_number_words(n, en, zh):
    assert english_number(n) == en
    assert chinese_number(n) == zh


def test_out_of_range():
    with pytest.raises(ValueError):
        english_number(10000)
    with pytest.raises(ValueError):
        chinese_number(-1)


def test_pairs_and_splits_are_deterministic_and_disjoint():
    assert number_pairs(3) == [("one", "一"), ("two", "二"), ("three", "三")]
    a, b = number_translation_splits(seed=0), number_translation_splits(seed=0)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == {"train": 699, "val": 100, "test": 200}
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert number_translation_splits(seed=1)["test"] != a["test"]
    with pytest.raises(ValueError):
        number_translation_splits(val_fraction=0.6, test_fraction=0.5)
