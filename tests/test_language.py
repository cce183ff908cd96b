"""Invariants of the synthetic language: each label is the ground truth of the tokens as written."""

import pytest
import torch

from universality.config import LanguageConfig
from universality.errors import UniversalityError
from universality.tasks import SyntheticLanguage

torch.set_num_threads(1)

CONFIG = LanguageConfig(seq_len=48, position_period=8, repeat_len=5, p_open=0.15, p_close=0.3,
                        p_repeat=0.7)


@pytest.fixture(scope="module")
def language():
    return SyntheticLanguage(CONFIG)


@pytest.fixture(scope="module")
def sample(language):
    return language.sample(300, seed=7)


def test_same_seed_gives_same_rows_and_labels(language, sample):
    again = language.sample(300, seed=7)
    assert torch.equal(sample.tokens, again.tokens)
    for key in sample.labels:
        assert torch.equal(sample.labels[key], again.labels[key])


def test_different_seeds_give_different_rows(language, sample):
    assert not torch.equal(sample.tokens, language.sample(300, seed=8).tokens)


def test_grammar_depends_on_grammar_seed_only():
    a, b = SyntheticLanguage(CONFIG), SyntheticLanguage(CONFIG)
    other = SyntheticLanguage(CONFIG.model_copy(update={"grammar_seed": 1}))
    assert torch.equal(a.transitions, b.transitions) and torch.equal(a.emissions, b.emissions)
    assert not torch.equal(a.transitions, other.transitions)


def test_shapes_keys_and_vocabulary(language, sample):
    assert sample.tokens.shape == (300, CONFIG.seq_len)
    assert set(sample.labels) == {"class", "position", "prev_token", "depth", "in_repeat"}
    assert all(label.shape == sample.tokens.shape for label in sample.labels.values())
    assert all(label.dtype == torch.long for label in sample.labels.values())
    assert len(language.token_names) == language.vocab_size == len(set(language.token_names))
    assert language.token_names[language.bos] == "BOS" and language.bos == 0
    assert sample.tokens.min() >= 0 and sample.tokens.max() < language.vocab_size


def test_position_zero_is_bos_and_nowhere_else(language, sample):
    assert (sample.tokens[:, 0] == language.bos).all()
    assert (sample.tokens[:, 1:] != language.bos).all()


def test_position_markers_exactly_at_multiples_of_the_period(language, sample):
    is_marker = sample.tokens >= language.marker_base
    positions = torch.arange(CONFIG.seq_len)
    expected = (positions % CONFIG.position_period == 0) & (positions > 0)
    assert torch.equal(is_marker, expected.expand_as(is_marker))
    names = [language.token_names[t] for t in sample.tokens[0, expected].tolist()]
    assert names == [f"pos{p // CONFIG.position_period}" for p in positions[expected].tolist()]


def test_position_label_is_the_position(sample):
    assert torch.equal(sample.labels["position"], torch.arange(CONFIG.seq_len).expand_as(sample.tokens))


def test_prev_token_is_tokens_shifted_right(sample):
    prev = sample.labels["prev_token"]
    assert (prev[:, 0] == -1).all()
    assert torch.equal(prev[:, 1:], sample.tokens[:, :-1])


def test_depth_equals_nesting_recomputed_from_tokens(language, sample):
    names = language.token_names
    for row_tokens, row_depth in zip(sample.tokens.tolist(), sample.labels["depth"].tolist()):
        depth, expected = 0, []
        for token in row_tokens:
            if names[token].startswith("("):
                depth += 1
            elif names[token].startswith(")"):
                depth = max(0, depth - 1)
            expected.append(depth)
        assert row_depth == expected
    assert sample.labels["depth"].max() >= 2  # brackets do nest


def test_class_label_of_class_tokens_is_the_emitting_class(language, sample):
    tokens, labels = sample.tokens, sample.labels["class"]
    n_classes, per_class = CONFIG.n_classes, CONFIG.tokens_per_class
    is_class_token = (tokens >= 1) & (tokens < language.open_base)
    assert torch.equal(labels[is_class_token], (tokens[is_class_token] - 1) // per_class)
    names = [language.token_names[t] for t in tokens[is_class_token].tolist()]
    assert all(name.startswith(f"c{c}_") for name, c in zip(names, labels[is_class_token].tolist()))
    within = (tokens[is_class_token] - 1) % per_class
    assert (language.emissions[labels[is_class_token], within] > 0).all()
    # other kinds: BOS, bracket, marker have codes n_classes, n_classes + 1, n_classes + 2
    is_bracket = (tokens >= language.open_base) & (tokens < language.marker_base)
    assert (labels[:, 0] == n_classes).all()
    assert (labels[is_bracket] == n_classes + 1).all()
    assert (labels[tokens >= language.marker_base] == n_classes + 2).all()


def test_hidden_states_follow_the_transition_support(language):
    """Consecutive class tokens outside repeats and brackets move along allowed transitions."""
    sample = SyntheticLanguage(CONFIG.model_copy(update={"p_repeat": 0.0})).sample(200, seed=3)
    classes = sample.labels["class"]
    content = classes < CONFIG.n_classes
    pairs = content[:, :-1] & content[:, 1:]
    moves = language.transitions[classes[:, :-1][pairs], classes[:, 1:][pairs]]
    assert (moves > 0).all()


def test_in_repeat_spans_equal_an_earlier_span_of_content_tokens(language, sample):
    in_repeat = sample.labels["in_repeat"]
    content = language.content_positions()
    assert set(in_repeat.unique().tolist()) <= {0, 1}
    repeating_rows = 0
    for row in range(sample.tokens.shape[0]):
        written = in_repeat[row].nonzero().squeeze(1)
        if len(written) == 0:
            continue
        repeating_rows += 1
        assert len(written) == CONFIG.repeat_len
        copied = sample.tokens[row, written]
        index = (content == written[0]).nonzero().item()  # the copy is consecutive content positions
        assert torch.equal(content[index:index + CONFIG.repeat_len], written)
        earlier = sample.tokens[row, content[:index]]  # content tokens before the copy
        windows = earlier.unfold(0, CONFIG.repeat_len, 1)  # [starts, repeat_len]
        assert (windows == copied).all(dim=1).any(), f"row {row}: no earlier span matches"
    assert 0.5 * 300 < repeating_rows < 0.9 * 300  # p_repeat = 0.7


@pytest.mark.parametrize("update, fragment", [
    ({"repeat_len": 30}, "repeat_len 30 is too long"),
    ({"p_open": 1.0}, "p_open 1.0 leaves no class tokens"),
])
def test_bad_config_combinations_raise_one_line(update, fragment):
    with pytest.raises(UniversalityError, match=fragment) as error:
        SyntheticLanguage(CONFIG.model_copy(update=update))
    assert "\n" not in str(error.value)


def test_no_brackets_when_there_are_no_bracket_types():
    language = SyntheticLanguage(CONFIG.model_copy(update={"n_bracket_types": 0}))
    sample = language.sample(50, seed=0)
    assert (sample.labels["depth"] == 0).all()
    assert (sample.labels["class"] != CONFIG.n_classes + 1).all()
