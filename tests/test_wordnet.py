from pathlib import Path

import pytest

from webly.core.errors import WeblyError
from webly.labels import wordnet as wnmod


def test_lexnames_has_the_45_standard_files():
    lines = wnmod.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert "05\tnoun.animal\t1" in lines


@pytest.mark.slow  # the one-time build a fresh machine does (bootstrap); 9 s
@pytest.mark.skipif(not (wnmod.DEBIAN_DIR / "data.noun").is_file(),
                    reason="Debian wordnet-base not installed")
def test_builds_nltk_layout_from_debian_files_and_resolves_mule_deer(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    where = wnmod.provision(nltk_root=tmp_path, allow_download=False, use_nltk_data=False)
    assert where.startswith("built from")
    target = tmp_path / "corpora" / "wordnet"
    assert (target / "lexnames").is_file() and (target / "index.sense").is_file()
    wn = WordNetCorpusReader(str(target), None)
    syn = wn.synset_from_pos_and_offset("n", 2432511)
    assert syn.lemma_names()[0] == "mule_deer"


def test_provision_and_wnid_lookup():
    assert wnmod.synset_from_wnid("n02432511").name() == "mule_deer.n.01"
    assert wnmod.wnid_of(wnmod.synset_from_wnid("n01568892")) == "n01568892"


@pytest.mark.parametrize("bad", ["x123", "n12", "n99999999"])
def test_bad_wnid_is_a_clear_error(bad):
    with pytest.raises(WeblyError):
        wnmod.synset_from_wnid(bad)


def test_clear_error_when_no_wordnet_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(wnmod, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.delenv("WEBLY_WORDNET_DIR", raising=False)
    with pytest.raises(WeblyError, match="apt-get install wordnet-base wordnet-sense-index"):
        wnmod.provision(nltk_root=tmp_path / "cache", allow_download=False, use_nltk_data=False)


def test_not_a_wordnet_folder(tmp_path: Path):
    with pytest.raises(WeblyError, match="missing data.noun"):
        wnmod.build_nltk_layout(tmp_path, tmp_path / "out")


def test_a_folder_without_index_sense_is_refused(tmp_path: Path):
    """NLTK 3.10 opens index.sense when it loads WordNet: without it every later lookup fails."""
    src = tmp_path / "dict"
    src.mkdir()
    for name in wnmod.REQUIRED:
        if name != "index.sense":
            (src / name).write_text("")
    with pytest.raises(WeblyError, match="missing index.sense"):
        wnmod.build_nltk_layout(src, tmp_path / "out")
