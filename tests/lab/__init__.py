"""The network-namespace lab that the lab-marked tests trace through."""

from tests.lab.topology import (
    PLAN,
    AddressPlan,
    FamilyPlan,
    Lab,
    LabError,
    LabUnavailable,
    ProbeResult,
    lab_unavailable_reason,
)

__all__ = [
    "PLAN",
    "AddressPlan",
    "FamilyPlan",
    "Lab",
    "LabError",
    "LabUnavailable",
    "ProbeResult",
    "lab_unavailable_reason",
]
