"""batchdrain: run big batches on AWS Lambda and know, exactly once, when they are done."""
