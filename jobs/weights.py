"""Job: the weights stage. spark-submit jobs/weights.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("weights"))
