from .equilibrium import EquilibriumLoss, equilibrium_loss

__all__ = ["EquilibriumLoss", "equilibrium_loss"]
