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


def test_dense_onset_places_the_last_collapse_and_many_image_draws_place_theirs_at_once():
    """The rule by hand: the first point of the last unbroken run of points whose +-10-iteration mean is
    below half the window's largest; None when the last point is not collapsed. Many draws of images
    (an onset interval's resamples) are placed at once, each as it would be alone."""
    import math
    import random

    from trainer.co import Row, dense_onset, onset_on_images, onsets_on_images

    dip_and_back = [[it, 0.4 if it < 130 or 150 <= it < 170 else 0.0] for it in range(101, 201)]
    # 169's mean holds 11 points at 0.4 of 21 (0.21, above 0.2), 170's 10 (0.19); the dip at 130-149 recovered
    assert dense_onset(dip_and_back, 200) == 170
    assert dense_onset(dip_and_back, 160) is None  # up again at 160
    assert dense_onset([[it, math.nan] for it in range(1, 30)], 29) is None
    assert dense_onset([], 10) is None
    rng = random.Random(0)
    falls = [rng.randint(120, 180) for _ in range(32)]
    rows = [Row(it, 0.0, 0.0, [float(it < fall) for fall in falls]) for it in range(101, 201)]
    draws = [[rng.randrange(32) for _ in range(rng.choice([8, 32]))] for _ in range(25)]
    together = onsets_on_images(rows, draws, 200)
    assert together == [onset_on_images(rows, images, 200) for images in draws]
    assert len(set(together)) > 3 and all(120 <= onset <= 190 for onset in together)
