"""Great-circle distances and areas used by placement constraints."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.topology.geo import EARTH_RADIUS_KM, Area, GeoPoint

LONDON = GeoPoint(51.5074, -0.1278)
PARIS = GeoPoint(48.8566, 2.3522)
NEW_YORK = GeoPoint(40.7128, -74.0060)
BRISTOL = GeoPoint(51.4545, -2.5879)
BATH = GeoPoint(51.3811, -2.3590)
EDINBURGH = GeoPoint(55.9533, -3.1883)


@pytest.mark.parametrize(
    ("a", "b", "expected", "tolerance"),
    [
        (LONDON, PARIS, 344.0, 2.0),
        (LONDON, NEW_YORK, 5570.0, 15.0),
        (BRISTOL, BATH, 17.9, 1.0),
        (LONDON, EDINBURGH, 534.0, 3.0),
        # A quarter and a half of a great circle.
        (GeoPoint(0, 0), GeoPoint(0, 90), math.pi * EARTH_RADIUS_KM / 2, 1e-6),
        (GeoPoint(0, 0), GeoPoint(0, 180), math.pi * EARTH_RADIUS_KM, 1e-6),
        (GeoPoint(90, 0), GeoPoint(-90, 0), math.pi * EARTH_RADIUS_KM, 1e-6),
        # Across the antimeridian the short way round: 2 degrees of longitude at the equator.
        (GeoPoint(0, 179), GeoPoint(0, -179), 2 * math.pi * EARTH_RADIUS_KM / 180, 1e-6),
    ],
)
def test_known_distances(a: GeoPoint, b: GeoPoint, expected: float, tolerance: float) -> None:
    assert a.distance_km(b) == pytest.approx(expected, abs=tolerance)


def test_one_degree_of_latitude_is_about_111_km() -> None:
    assert GeoPoint(10, 20).distance_km(GeoPoint(11, 20)) == pytest.approx(111.195, abs=0.01)


def test_circle_contains_nearby_and_excludes_far_points() -> None:
    area = Area(centre=BRISTOL, radius_km=20)
    assert area.contains(BRISTOL)
    assert area.contains(BATH)  # ~18 km away
    assert not area.contains(LONDON)
    assert not Area(centre=BRISTOL, radius_km=17).contains(BATH)
    # The boundary is inclusive.
    assert Area(centre=BRISTOL, radius_km=BRISTOL.distance_km(BATH)).contains(BATH)


def test_polygon_contains_and_excludes() -> None:
    # A rough box around south-west England.
    box = Area(
        polygon=(
            GeoPoint(50.0, -6.0),
            GeoPoint(50.0, -1.5),
            GeoPoint(52.0, -1.5),
            GeoPoint(52.0, -6.0),
        )
    )
    assert box.contains(BRISTOL)
    assert box.contains(BATH)
    assert not box.contains(LONDON)  # east of the box
    assert not box.contains(EDINBURGH)  # north of it
    assert not box.contains(PARIS)


def test_concave_polygon_excludes_its_notch() -> None:
    # An L shape: the square [0,2]x[0,2] without the quarter [1,2]x[1,2].
    ell = Area(
        polygon=(
            GeoPoint(0, 0),
            GeoPoint(0, 2),
            GeoPoint(1, 2),
            GeoPoint(1, 1),
            GeoPoint(2, 1),
            GeoPoint(2, 0),
        )
    )
    assert ell.contains(GeoPoint(0.5, 0.5))
    assert ell.contains(GeoPoint(0.5, 1.5))
    assert ell.contains(GeoPoint(1.5, 0.5))
    assert not ell.contains(GeoPoint(1.5, 1.5))
    assert not ell.contains(GeoPoint(-0.5, 0.5))
    assert not ell.contains(GeoPoint(0.5, 2.5))


def test_named_location_area_matches_by_name_not_coordinates() -> None:
    assert Area(location="bristol").contains(LONDON)


latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)
points = st.builds(GeoPoint, latitudes, longitudes)


@settings(max_examples=200, derandomize=True, database=None)
@given(points, points)
def test_distance_is_symmetric_non_negative_and_bounded(a: GeoPoint, b: GeoPoint) -> None:
    d = a.distance_km(b)
    assert d >= 0
    assert d == pytest.approx(b.distance_km(a), abs=1e-6)
    assert d <= math.pi * EARTH_RADIUS_KM + 1e-6
    assert a.distance_km(a) == 0


@settings(max_examples=100, derandomize=True, database=None)
@given(points, points, points)
def test_distance_obeys_the_triangle_inequality(a: GeoPoint, b: GeoPoint, c: GeoPoint) -> None:
    assert a.distance_km(c) <= a.distance_km(b) + b.distance_km(c) + 1e-6


@settings(max_examples=100, derandomize=True, database=None)
@given(points, st.floats(min_value=0, max_value=25_000, allow_nan=False))
def test_circle_contains_its_centre(centre: GeoPoint, radius: float) -> None:
    assert Area(centre=centre, radius_km=radius).contains(centre)
