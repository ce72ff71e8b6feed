"""The requests service: the image-request aggregate and the process manager driving each job."""
