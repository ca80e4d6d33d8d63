"""Carbon intensity: the grams of CO2eq one kWh emits where and when it is spent."""
