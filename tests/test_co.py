from trainer.co import CODetector


def feed(series):
    detector = CODetector()
    fired = [detector.update(i, pgd, fgsm) for i, (pgd, fgsm) in enumerate(series, 1)]
    return [detector.place(collapse) for collapse in fired if collapse]


def test_fires_once_at_the_onset_when_pgd_collapses_while_fgsm_holds():
    events = feed([(0.30, 0.45), (0.42, 0.55), (0.40, 0.60), (0.05, 0.80), (0.00, 0.90), (0.00, 0.95)])
    assert len(events) == 1
    assert events[0]["iteration"] == 4 and events[0]["confirmed_at"] == 5
    assert events[0]["best_pgd_acc"] == 0.42 and events[0]["pgd_acc"] == 0.05


def test_a_single_dip_is_not_catastrophic_overfitting():
    """GradAlign runs sometimes dip for one eval and recover."""
    assert feed([(0.30, 0.45), (0.13, 0.54), (0.24, 0.46), (0.10, 0.51), (0.20, 0.48)]) == []


def test_quiet_on_standard_training_where_robustness_never_existed():
    assert feed([(0.02, 0.10), (0.00, 0.05), (0.01, 0.30), (0.00, 0.20)]) == []


def test_quiet_on_pgd_training_noise():
    assert feed([(0.50, 0.58), (0.55, 0.62), (0.41, 0.52), (0.57, 0.63)]) == []


def test_quiet_when_everything_falls_together():
    """A diverging run loses FGSM and PGD accuracy together: bad, but not catastrophic overfitting."""
    assert feed([(0.50, 0.60), (0.10, 0.15), (0.00, 0.05), (0.00, 0.02)]) == []


def test_state_round_trips_for_resume():
    detector = CODetector()
    detector.update(1, 0.4, 0.5)
    detector.update(2, 0.1, 0.6)
    restored = CODetector(**detector.state_dict())
    assert restored.update(3, 0.0, 0.7).first["iteration"] == 2
