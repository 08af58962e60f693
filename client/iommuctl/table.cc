#include "client/iommuctl/table.h"

#include <algorithm>
#include <cstddef>
#include <utility>

namespace iommu_broker::iommuctl {

Table::Table(Row header) : has_header_(!header.empty()) {
  if (has_header_) rows_.push_back(std::move(header));
}

void Table::AddRow(Row row) { rows_.push_back(std::move(row)); }

std::string Table::Render() const {
  std::vector<size_t> widths;
  for (const Row& row : rows_) {
    widths.resize(std::max(widths.size(), row.size()));
    for (size_t column = 0; column < row.size(); ++column) {
      widths[column] = std::max(widths[column], row[column].size());
    }
  }
  std::string out;
  for (const Row& row : rows_) {
    std::string line;
    for (size_t column = 0; column < row.size(); ++column) {
      if (column > 0) line.append(2, ' ');
      line += row[column];
      line.append(widths[column] - row[column].size(), ' ');
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line;
    out += '\n';
  }
  return out;
}

}  // namespace iommu_broker::iommuctl
