"""Studies of many recipes on one model.

    sweep            a grid of recipes, a row of numbers each, and the Pareto frontier
    sensitivity      units of layers, and the quality lost when one is compressed alone
    planner          the budget planner: a setting per unit that beats the uniform one (Planner,
                     its result a Plan: plan_result; its options per unit: planner_options;
                     the knapsack over them: knapsack)
    ranking          candidates (recipes, exports, GGUF files) against a reference, by llama.cpp's KL
                     statistics (`compare`, the Compare page)
    inside_layer     the numbers behind the pictures of one layer (the Inside a layer page)
"""
