"""lmkit.data.vocab: the one word tokenizer and the one vocabulary (chapters 1, 2, 18, 19, 22)."""

import pytest
import torch

from lmkit.data import BOS, EOS, PAD, UNK, Vocab, pad_batch, tokenize_words


def test_tokenize_words_default_rule():
    # letters only, lower-cased, at most one inner apostrophe; digits and punctuation dropped
    assert tokenize_words("The cat's 3 hats, THE end.") == ["the", "cat's", "hats", "the", "end"]
    assert tokenize_words("'quoted' dogs' rock'n'roll") == ["quoted", "dogs", "rock'n", "roll"]
    assert tokenize_words("The Cat", lower=False) == ["The", "Cat"]  # capitals are letters too
    assert tokenize_words("") == []


def test_tokenize_words_options():
    assert tokenize_words("mp3 at 42", digits=True) == ["mp3", "at", "42"]
    assert tokenize_words("forty-two, ok?", punctuation=True) == [
        "forty",
        "-",
        "two",
        ",",
        "ok",
        "?",
    ]
    assert tokenize_words("wow, great!?", punctuation="!?") == ["wow", "great", "!", "?"]
    assert tokenize_words("Didn't, can't", split_negation=True) == ["did", "n't", "ca", "n't"]
    assert tokenize_words("DIDN'T", lower=False, split_negation=True) == ["DID", "N'T"]
    assert tokenize_words("didn't") == ["didn't"]  # without the option "n't" stays in the word


def test_specials_come_first_in_the_order_given():
    v = Vocab(["a", "b"], specials=(PAD, BOS, EOS, UNK))
    assert v.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
    w = Vocab(["a"], specials=(PAD, UNK))
    assert (w.pad_id, w.unk_id, w.bos_id, w.eos_id) == (0, 1, None, None)
    assert Vocab(["a"]).pad_id is None and len(Vocab(["a"])) == 1
    with pytest.raises(ValueError, match="repeated"):
        Vocab(["a", "<pad>"], specials=(PAD,))
    with pytest.raises(ValueError, match="counts"):
        Vocab(["a", "b"], counts=[1])


def test_unknown_tokens_map_to_unk_or_are_left_out():
    with_unk = Vocab(["cat"], specials=(PAD, UNK))
    assert with_unk.encode(["the", "cat"]) == [1, 2]
    assert with_unk.encode("the cat") == [1, 2]  # a string goes through the tokenizer
    without = Vocab(["cat"])
    assert without.encode(["the", "cat", "sat"]) == [0]
    with pytest.raises(ValueError, match="<bos>"):
        without.encode("cat", bos=True)


def test_min_count_is_inclusive_and_order_and_ties():
    words = ["b", "a", "a", "c", "b", "a", "d", "d"]  # a 3, b 2, d 2, c 1
    v = Vocab.from_tokens(words, min_count=2)
    assert v.itos == ["a", "b", "d"] and v.counts.tolist() == [3, 2, 2]  # count 2 kept, ties a-z
    assert Vocab.from_tokens(words, min_count=3).itos == ["a"]
    assert Vocab.from_tokens(words, min_count=1).itos == ["a", "b", "d", "c"]
    alpha = Vocab.from_tokens(words, min_count=2, order="alphabetical", specials=(UNK,))
    assert alpha.itos == ["<unk>", "a", "b", "d"] and alpha.counts.tolist() == [0, 3, 2, 2]
    with pytest.raises(ValueError, match="order"):
        Vocab.from_tokens(words, order="random")


def test_max_size_counts_specials_and_keeps_the_most_frequent():
    words = ["z"] * 5 + ["y"] * 4 + ["b"] * 4 + ["a"]
    v = Vocab.from_tokens(words, max_size=3, specials=(PAD,), order="alphabetical")
    assert v.itos == ["<pad>", "b", "z"]  # z (5) and the tie b/y broken alphabetically: b
    assert len(Vocab.from_tokens(words, max_size=2)) == 2
    with pytest.raises(ValueError, match="max_size"):
        Vocab.from_tokens(words, max_size=1, specials=(PAD, UNK))


def test_from_texts_keeps_its_tokenizer_and_never_counts_a_special_twice():
    v = Vocab.from_texts(
        ["ab <pad>", "ba"], tokenize=str.split, specials=(PAD, UNK), order="alphabetical"
    )
    assert v.itos == ["<pad>", "<unk>", "ab", "ba"]
    assert v.encode("ba ab zz") == [3, 2, 1]
    chars = Vocab.from_texts(["七百", "九"], tokenize=list, specials=(PAD, BOS, EOS), join="")
    assert chars.decode(chars.encode("九七", bos=True, eos=True)) == "九七"


def test_decode_stops_at_eos_and_skips_pad_and_bos_but_not_unk():
    v = Vocab(["one", "two"], specials=(PAD, BOS, EOS, UNK))
    assert v.decode([1, 4, 3, 5, 2, 4, 0]) == "one <unk> two"
    assert v.decode(torch.tensor([0, 0, 5])) == "two"
    assert v.encode("one two", bos=True, eos=True) == [1, 4, 5, 2]


def test_encode_batch_right_pads_truncates_and_never_leaves_a_row_empty():
    v = Vocab(["a", "b", "c"], specials=(PAD, UNK), tokenize=str.split)
    ids, lengths = v.encode_batch(["a b c", "b", ""])
    assert ids.tolist() == [[2, 3, 4], [3, 0, 0], [1, 0, 0]] and ids.dtype == torch.long
    assert lengths.tolist() == [3, 1, 1]
    ids, lengths = v.encode_batch(["a b c", "c"], max_length=2)
    assert ids.tolist() == [[2, 3], [4, 0]] and lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match="<pad>"):
        Vocab(["a"]).encode_batch(["a"])


def test_pad_batch():
    assert pad_batch([[1, 2], [3]]).tolist() == [[1, 2], [3, 0]]
    assert pad_batch([(5,), (6, 7)], pad_id=9).tolist() == [[5, 9], [6, 7]]
    with pytest.raises(ValueError):
        pad_batch([])
