"""Geography for placement and routing constraints: points, circles, polygons."""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class GeoPoint:
    latitude: float
    longitude: float

    def distance_km(self, other: GeoPoint) -> float:
        """Great-circle distance (haversine): exact enough for choosing nearby clusters."""
        lat1, lat2 = math.radians(self.latitude), math.radians(other.latitude)
        dlat = lat2 - lat1
        dlon = math.radians(other.longitude - self.longitude)
        a = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
        return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class Area:
    """A circle (centre + radius_km), a polygon, or a named location resolved by a topology."""

    centre: GeoPoint | None = None
    radius_km: float | None = None
    polygon: tuple[GeoPoint, ...] = ()
    location: str | None = None

    def contains(self, point: GeoPoint, locations: dict[str, GeoPoint] | None = None) -> bool:
        if self.centre is not None and self.radius_km is not None:
            return self.centre.distance_km(point) <= self.radius_km
        if self.polygon:
            return _in_polygon(point, self.polygon)
        return True  # named locations are matched by name, not coordinates


def _in_polygon(point: GeoPoint, polygon: tuple[GeoPoint, ...]) -> bool:
    """Even-odd ray casting on latitude/longitude; fine for areas that do not cross 180°."""
    inside = False
    x, y = point.longitude, point.latitude
    count = len(polygon)
    for i in range(count):
        a, b = polygon[i], polygon[(i + 1) % count]
        if (a.latitude > y) != (b.latitude > y):
            cross = a.longitude + (y - a.latitude) * (b.longitude - a.longitude) / (
                b.latitude - a.latitude
            )
            if x < cross:
                inside = not inside
    return inside
