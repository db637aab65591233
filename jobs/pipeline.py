"""Job: several stages in one process. spark-submit jobs/pipeline.py --profile P [--stages a,b]"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main(None))
