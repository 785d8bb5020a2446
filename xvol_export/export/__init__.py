"""The export steps: ONNX graphs, their precisions (fp16, int8 Q/DQ), OpenVINO IR, TensorRT engines and the
TensorRT compatibility table (the job that chains them is ``xvol_export.jobs.export``)."""
