"""Scanner and protocol knobs (domains.py): invalid domains refused, a domain by name."""

from __future__ import annotations

import pytest
from edgeseg.runtime.errors import InputError

from edgeseg.data.phantom import Domain, generate_case
from tests.data.phantom.common import COARSE


def test_a_domain_is_found_by_name_and_an_unknown_one_refused():
    with pytest.raises(InputError) as e:
        generate_case(0, "nowhere")
    assert e.value.fix
    assert generate_case(0, "target", spacing=COARSE).meta["domain"] == "target"


def test_invalid_domains_are_refused_with_a_fix():
    with pytest.raises(InputError) as e:
        Domain("bad", noise_hu=(10.0, 5.0))
    assert e.value.fix
    with pytest.raises(InputError) as e:
        Domain("bad", phases=(("venous", 1.0),))
    assert e.value.fix
