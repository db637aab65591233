"""Job: the sample stage. spark-submit jobs/sample.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("sample"))
