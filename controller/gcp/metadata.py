"""Where the controller runs, from the GCE metadata server: the cluster's region.

Only asked when ``--region`` is not given and the endpoint is Google's. The
host follows google-auth's ``GCE_METADATA_HOST`` so it can be pointed elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import requests

log = logging.getLogger(__name__)

LOCATION = "/computeMetadata/v1/instance/attributes/cluster-location"


def region_of(location: str) -> str:
    """``europe-west1-b`` (a zonal cluster) -> ``europe-west1``; a region stays as it is."""
    parts = location.strip().split("-")
    return "-".join(parts[:2]) if len(parts) > 2 else location.strip()


def cluster_region(env: Mapping[str, str] = os.environ, timeout: float = 2.0) -> str:
    """The cluster's region, or "" (with a warning) when the metadata server cannot say."""
    host = env.get("GCE_METADATA_HOST", "metadata.google.internal")
    try:
        r = requests.get(
            f"http://{host}{LOCATION}", headers={"Metadata-Flavor": "Google"}, timeout=timeout
        )
        r.raise_for_status()
    except requests.RequestException as e:
        log.warning(
            "no --region and the metadata server did not answer (%s); "
            "regional Ingresses will not be handled",
            e,
        )
        return ""
    return region_of(r.text)
