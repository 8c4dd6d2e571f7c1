import random
from collections import Counter

import numpy as np
from pycocoevalcap.cider.cider import Cider

from captioner.training.cider import CODE_BASE, CiderD

WORDS = "a an the dog cat man woman red blue small large sits runs on under next to left right of".split()


def random_caption(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def test_equals_pycocoevalcap_on_hundreds_of_captions():
    rng = random.Random(0)
    refs = {i: [random_caption(rng) for _ in range(rng.randint(1, 5))] for i in range(300)}
    hyps = {i: [random_caption(rng) if i % 3 else refs[i][0]] for i in refs}
    hyps[1] = [""]  # empty hypothesis
    hyps[2] = ["zebra zebra zebra unseen"]  # words no reference has, repeated
    hyps[4] = ["dog"]  # no bigram at all
    refs[5] = ["cat"]
    expected_mean, expected = Cider().compute_score(refs, hyps)
    ours = CiderD(refs.values()).score([hyps[i][0] for i in refs], [refs[i] for i in refs])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert abs(ours.mean() - expected_mean) < 1e-6


def test_fixed_document_frequencies_differ_from_batch_frequencies():
    train = [["a dog runs", "the dog runs fast"], ["a cat sits"], ["a man sits on a bench"]] * 10
    scorer = CiderD(train)
    one = scorer.score(["a dog runs"], [["a dog runs", "a dog is running"]])
    assert one[0] > 0  # a single image still gets a meaningful score with training-set idf
    assert scorer.score(["a dog runs"], [["a dog runs"]])[0] > scorer.score(["a cat"], [["a dog runs"]])[0]


def test_batching_grouping_and_caching_do_not_change_scores():
    """Scores with training-set document frequencies: references holding n-grams the training set lacks, several
    beams sharing one reference set, cached reference vectors and one-at-a-time scoring all agree."""
    rng = random.Random(1)
    train = [[random_caption(rng) for _ in range(5)] for _ in range(50)]
    ref_sets = [[random_caption(rng) + " zebra giraffe" for _ in range(3)] + [random_caption(rng)] for _ in range(8)]
    hyps, refs = [], []
    for image in ref_sets:  # 5 beams per image, some reusing the unseen words of their references
        for beam in range(5):
            hyps.append(random_caption(rng) + (" zebra giraffe" if beam % 2 else " okapi"))
            refs.append(image)
    batch = CiderD(train).score(hyps, refs)
    scorer = CiderD(train)
    one_by_one = np.array([scorer.score([h], [r])[0] for h, r in zip(hyps, refs)])
    cached = scorer.score(hyps, refs)  # every reference set is cached by now
    np.testing.assert_allclose(one_by_one, batch, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cached, batch, rtol=0, atol=1e-12)
    assert (batch[1::2] > 0).all()


def test_corpus_reference_sets_score_as_sets_split_on_the_fly():
    """A batch mixing reference sets of the scorer's own corpus (word ids reused from the document-frequency pass)
    with other sets (split when scored) gives each hypothesis the score it gets alone, and a corpus set scores
    the same as an equal set the scorer has to split (same tokens, other whitespace)."""
    rng = random.Random(2)
    train = [[random_caption(rng) for _ in range(rng.randint(3, 6))] for _ in range(40)]
    others = [[random_caption(rng) + " okapi" for _ in range(4)] for _ in range(5)]
    sets = [train[3], others[0], train[17], train[3], others[1], train[30], others[2]]
    hyps = [random_caption(rng) if k % 3 else sets[k][0] for k in range(len(sets))]
    mixed = CiderD(train).score(hyps, sets)
    alone = np.array([CiderD(train).score([h], [r])[0] for h, r in zip(hyps, sets)])
    np.testing.assert_allclose(mixed, alone, rtol=0, atol=1e-12)
    respaced = [[" " + sentence + " " for sentence in refs] for refs in sets]  # not corpus keys: split here
    np.testing.assert_allclose(CiderD(train).score(hyps, respaced), mixed, rtol=0, atol=1e-12)
    assert len(set(np.round(mixed, 9))) > 3  # the sets really differ in score


def test_a_batch_of_only_empty_hypotheses_scores_zero_like_pycocoevalcap():
    """An untrained model can emit <eos> first for every validation image (validation scores the same references
    every epoch, so their vectors are cached): the batch then has no n-gram at all."""
    refs = {0: ["a dog runs", "the dog"], 1: ["a cat sits"], 2: ["a man on a bench"]}
    _, expected = Cider().compute_score(refs, {i: [""] for i in refs})
    cider = CiderD(refs.values())
    cider.score(["a dog", "a cat", "a man"], list(refs.values()))  # the references' vectors are cached now
    ours = cider.score(["", "", ""], list(refs.values()))  # so this batch has no n-gram at all
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    assert ours.tolist() == [0.0, 0.0, 0.0]


def _plain_document_frequencies(corpus, n=4):
    """In how many documents each n-gram (a tuple of words) occurs, counted the obvious way."""
    df = Counter()
    for refs in corpus:
        df.update({tuple(words[i:i + k]) for words in (s.split() for s in refs)
                   for k in range(1, n + 1) for i in range(len(words) - k + 1)})
    return df


def test_document_frequencies_equal_a_plain_count():
    """The sorted-key build of the document-frequency table (one int64 key per (n-gram, document), or n-gram ranks
    first where the code times the number of documents overflows int64) counts what a set per document counts,
    with empty documents and empty sentences, and however the sentences are chunked into word ids."""
    rng = random.Random(3)
    for vocabulary, documents in ((4, 30), (40, 200), (600, 200)):
        words = [f"w{i}" for i in range(vocabulary)]
        corpus = [[" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) for _ in range(rng.randint(0, 6))]
                  for _ in range(documents)]
        for refs in corpus[::2]:  # n-grams repeated within a document count once (rare by chance with many words)
            refs.extend(refs[:1])
        scorer = CiderD(corpus)
        word_of = {index: word for word, index in scorer._word_id.items()}
        ours = {}
        for code, count in zip(scorer._df_codes.tolist(), scorer._df_counts.tolist()):
            gram = []
            while code:
                code, digit = divmod(code, CODE_BASE)
                gram.append(word_of[digit])
            ours[tuple(gram)] = count
        assert ours == _plain_document_frequencies(corpus)
        assert (np.diff(scorer._df_codes) > 0).all()  # sorted and distinct: scoring binary-searches it
        sentences = [s for refs in corpus for s in refs]
        for whole, chunked in zip(scorer._ids(sentences), scorer._ids(sentences, chunk=7)):
            np.testing.assert_array_equal(whole, chunked)
    assert scorer._df_codes.max() > (2 ** 63 - 1) // documents  # the last corpus takes the rank path for 4-grams
