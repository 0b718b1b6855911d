import pytest

from ncbench.registry import Registry, UnknownNameError


def test_register_get_names_and_duplicates():
    r = Registry("widget")

    @r.register("conv4")
    def conv4():
        return 4

    r.register("resnet12", 12)
    assert r.get("conv4") is conv4 and r.get("resnet12") == 12
    assert r.names() == ["conv4", "resnet12"] and "conv4" in r and len(r) == 2
    with pytest.raises(ValueError, match="duplicate widget name 'conv4'"):
        r.register("conv4", 5)


def test_unknown_name_suggests_closest():
    r = Registry("backbone")
    for n in ("conv4", "resnet12", "resnet18"):
        r.register(n, n)
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'resnet-12'; did you mean 'resnet12'"):
        r.get("resnet-12")
    with pytest.raises(UnknownNameError, match="known: conv4, resnet12, resnet18"):
        r.get("zzzzzz")


def test_bad_names_rejected():
    r = Registry("thing")
    with pytest.raises(ValueError, match="non-empty"):
        r.register(" x", 1)
