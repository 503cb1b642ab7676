"""Design-time risk register: threat catalogue, FMEA / ISO 31000 scoring, evidence updates."""

from bastion.risk.catalogue import Catalogue, Threat, load_catalogue
from bastion.risk.evidence import GuardEvaluation, load_guard_evaluation, update_from_report
from bastion.risk.register import (
    Change,
    Evidence,
    Risk,
    RiskRegister,
    build_register,
    load_register,
    save_register,
)
from bastion.risk.system import SystemProfile, load_system

__all__ = [
    "Catalogue",
    "Change",
    "Evidence",
    "GuardEvaluation",
    "Risk",
    "RiskRegister",
    "SystemProfile",
    "Threat",
    "build_register",
    "load_catalogue",
    "load_guard_evaluation",
    "load_register",
    "load_system",
    "save_register",
    "update_from_report",
]
