"""Choices made on validation records (choose.py): the tau grid and the matched tau."""
import numpy as np
import pandas as pd
import pytest

from robust_abstain.choose import matched_tau, tau_grid
from robust_abstain.errors import ParamError
from robust_abstain.selectors import eri, softmax_response


def _records(conf, flip2):
    """6 points, all accurate and robust at eps; APGD-CE at 2 eps flips those in ``flip2``."""
    n = len(conf)
    pred = np.zeros(n, dtype=int)
    adv2 = np.where(np.asarray(flip2, bool), 1, 0)
    return pd.DataFrame({"index": np.arange(n), "label": pred, "pred": pred, "conf": conf, "eps": 0.1,
                         "adv_pred_1x": pred, "adv_conf_1x": np.asarray(conf) - 0.05,
                         "adv_pred_2x": adv2, "adv_conf_2x": np.where(adv2 == 1, 0.3, np.asarray(conf) - 0.1),
                         "sr_pred_1x": -1, "sr_conf_1x": np.nan, "sr_pred_2x": pred,
                         "sr_conf_2x": np.asarray(conf) - 0.1})


def test_tau_grid_is_bounded_so_selector_names_stay_unique():
    assert tau_grid(34)[1] == 0.03 and tau_grid(100)[-1] == 0.99
    for bad in (1, 101):
        with pytest.raises(ParamError):
            tau_grid(bad)


def test_matched_tau_is_searched_at_or_above_one_half():
    """Below 1/2, S_SR's robust selection is a subset of S_ERI's (the attacks stop at a flip), and
    at tau = 0 it equals S_ERI's: a search from 0 would always pick 0. From 1/2 on: ERI robustly
    selects 4 of 6 (points 0-3); SR@0.5 all points with worst confidence >= 0.5 and no flip:
    0, 1, 2 (0.85, 0.75, 0.55); SR@0.7: 0, 1; SR@0.8: 0. The closest to 4/6 is 0.5."""
    df = _records([0.95, 0.85, 0.65, 0.55, 0.9, 0.9], [0, 0, 0, 0, 1, 1])
    assert eri(df).robust_selection == pytest.approx(4 / 6)
    np.testing.assert_array_equal(softmax_response(df, 0.0).robustly_selected, eri(df).robustly_selected)
    assert softmax_response(df, 0.5).robust_selection == pytest.approx(3 / 6)
    assert matched_tau(df, [0.0, 0.3, 0.5, 0.7, 0.8]) == 0.5
    assert matched_tau(df, [0.0, 0.3]) is None
