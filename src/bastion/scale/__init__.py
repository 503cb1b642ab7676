"""Scale-out: assessment sweeps over many models and threat models, locally or on Ray."""
