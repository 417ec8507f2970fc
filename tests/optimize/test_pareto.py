from edgewise.optimize.pareto import choose, dominates, pareto_front


def test_dominance_and_front():
    pts = [(0.99, 100, 1.0, 10), (0.98, 50, 1.0, 10), (0.97, 60, 2.0, 10), (0.99, 100, 1.0, 10)]
    assert dominates(pts[1], pts[2]) and not dominates(pts[0], pts[1])
    assert pareto_front(pts) == [0, 1, 3]


def test_choice_by_objective_with_near_ties():
    pts = [(0.99, 100, 1.00, 0), (0.99, 40, 1.02, 0), (0.97, 30, 2.0, 0)]
    assert choose(pts, "latency") == 1, "within 3% on latency and as accurate, the smaller model wins"
    assert choose(pts, "size") == 2
    assert choose(pts, "accuracy") == 0, "as accurate: the faster"
    pts = [(0.99, 100, 1.00, 0), (0.98, 40, 1.02, 0), (0.97, 39, 3.0, 0)]
    assert choose(pts, "latency") == 0, "within 3% on latency, accuracy is not traded for size"
    assert choose(pts, "size") == 1, "within 3% on size, the more accurate"
    assert choose([(0.98, 40, 1.0, 0), (0.99, 100, 1.05, 0)], "latency") == 0, "outside the band, speed decides"
