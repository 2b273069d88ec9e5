terraform {
  # 1.9: validation conditions may refer to other variables; terraform_data needs 1.4,
  # test files 1.6.
  required_version = ">= 1.9.0, < 2.0.0"

  # No providers at all: only the built-in terraform_data and local-exec, so this root
  # inits, validates, tests and applies with no registry access.
}
