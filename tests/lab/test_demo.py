"""The demo's data: non-IID ImageFolders per organisation, a disjoint held-out split."""

from __future__ import annotations

from lab.datasets import DIGIT_CLASSES as CLASSES
from lab.demo import make_digit_folders


def test_digit_shares_are_disjoint_non_iid_image_folders_with_a_held_out_split(tmp_path):
    dirs, test = make_digit_folders(tmp_path, ["a", "b", "c"], seed=0)

    files = {org: sorted(d.rglob("*.png")) for org, d in dirs.items()}
    ids = [{f.stem for f in fs} for fs in files.values()]
    assert sum(len(i) for i in ids) + len(test.labels) == 1797
    assert not (ids[0] & ids[1] or ids[1] & ids[2] or ids[0] & ids[2])
    assert {f.parent.name for fs in files.values() for f in fs} <= set(CLASSES)
    shares = [
        [sum(f.parent.name == c for f in fs) / len(fs) for c in CLASSES] for fs in files.values()
    ]
    assert max(abs(x - y) for x, y in zip(shares[0], shares[1], strict=True)) > 0.1
    assert test.images[0].size == (32, 32) and test.images[0].mode == "RGB"
