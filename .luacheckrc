-- luacheck configuration (make lint; tools/checks/luacheck.sh in CI)
std = "lua54"
-- table-driven specs keep one case (input and exact expected message) per
-- line: splitting them would hide the table
max_line_length = 170
files["spec"] = { std = "+busted" }
exclude_files = { "bench/out", "fuzz/out" }
