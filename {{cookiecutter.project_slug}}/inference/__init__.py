"""Using a trained model with its checkpoint alone: the model, its class names and its inputs'
preprocessing read back from the checkpoint (trained_model), input files turned into batches
of the model's inputs (inputs), predictions as rows of a table (predictions), and the model
exported to ONNX or torch.export's .pt2 and verified against itself (exporting). predict.py and
export.py are their command lines; test.py shares trained_model's test split. Training imports
none of it."""
