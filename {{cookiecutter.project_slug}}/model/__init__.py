"""Your model: nn.Modules (model), loss functions (loss) and metrics (metric), each named in
config.json (`arch`, `loss`, `metrics`). Only the model lives here: devices, optimizers and
logging are the engine's."""
